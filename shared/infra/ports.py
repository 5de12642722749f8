"""TCP port helpers for starting local servers."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago.

    Another process may take it before the caller binds it; callers that start a server on it should
    treat an early exit of that server as a possible port clash.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until a TCP connect to host:port succeeds.

    Accepting connections is not the same as serving requests: use a protocol-level check where it matters.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"nothing accepted TCP connections on {host}:{port} within {timeout:.1f} s"
                f" (last error: {last_error})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(min(0.05, max(remaining, 0.0)))
