"""The projector's fetch sizes: leaner than the other services' by default, the environment's when set."""

from __future__ import annotations

import pytest
from projector.settings import LEAN_FETCHES, ProjectorSettings

from shared.config import ServiceSettings


def test_the_projector_fetches_less_per_partition_than_the_other_services() -> None:
    mine, theirs = ProjectorSettings(database_url="x").kafka, ServiceSettings(database_url="x").kafka
    assert mine.partition_fetch_bytes == LEAN_FETCHES["partition_fetch_bytes"] < theirs.partition_fetch_bytes
    assert mine.fetch_max_bytes == LEAN_FETCHES["fetch_max_bytes"] < theirs.fetch_max_bytes


def test_fetch_sizes_from_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PARTITION_FETCH_BYTES", "8388608")
    kafka = ProjectorSettings(database_url="x").kafka
    assert kafka.partition_fetch_bytes == 8_388_608
    assert kafka.fetch_max_bytes == LEAN_FETCHES["fetch_max_bytes"]
