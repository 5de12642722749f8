"""glibc's mmap threshold is pinned in every service (its heap otherwise grows in steps after big frees)."""

from __future__ import annotations

import platform

import pytest

from shared.service import fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    assert fix_mmap_threshold() is True
