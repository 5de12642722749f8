"""Port helpers: a free port can be bound, and waiting on a closed one ends in a clear TimeoutError."""

import socket
import time

import pytest

from shared.infra.ports import free_port, wait_for_port


def test_free_port_can_be_bound_and_waited_for() -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        wait_for_port("127.0.0.1", port, timeout=1)


def test_waiting_on_a_closed_port_times_out_with_the_address() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.3)
    assert time.monotonic() - started < 2
