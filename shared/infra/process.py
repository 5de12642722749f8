"""Child-process helpers shared by the local servers: die with the parent, stop politely then firmly."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` asking Linux to send `sig` to the child when its parent goes away.

    This covers what atexit hooks cannot: the test runner killed by SIGKILL or leaving through
    `os._exit` (pytest-timeout does). Linux ties the signal to the *thread* that forked the child, so
    start long-lived servers from a thread that lives as long as they should (the main thread or the
    event loop's thread, never a worker of `asyncio.to_thread`). Returns None elsewhere than Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here: the child must only make the call, as loading a library after fork may deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the child's process group (it leads one: started with start_new_session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def terminate(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0, *, whole_group: bool = True
) -> None:
    """Send `sig`, wake the child should it be stopped (SIGSTOP holds other signals back), SIGKILL the
    group after `grace` seconds; returns once the child is reaped.

    `whole_group=False` sends `sig` to the leader only, for servers whose workers read the same signal
    differently (a PostgreSQL backend cancels its query on SIGINT, the postmaster shuts down).
    """
    if proc.poll() is not None:
        return
    if whole_group:
        signal_group(proc, sig)
    else:
        proc.send_signal(sig)
    signal_group(proc, signal.SIGCONT)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a server log, for error messages."""
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(empty log)"
