"""Which PostgreSQL server local runs and tests use: `$DATABASE_URL`, else one answering on
127.0.0.1:5432, else a throwaway embedded server. `SMSFLOW_PG=embedded` forces the last (CI runs both
paths); `SMSFLOW_PG=local` insists on the second.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from shared.infra.embedded_pg import EmbeddedPostgres, StopMode

log = logging.getLogger(__name__)

ServerKind = Literal["env", "local", "embedded"]

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_PROBE_TIMEOUT_S = 2.0
ADMIN_TIMEOUT_S = 10.0
MODE_ENV = "SMSFLOW_PG"


@dataclass(eq=False)
class PostgresServer:
    """A server to create test and run databases on. `stop()` and `restart()` act only on a server this
    process started (`kind == "embedded"`)."""

    admin_url: str
    kind: ServerKind
    embedded: EmbeddedPostgres | None = field(default=None, repr=False)

    def url_for(self, dbname: str) -> str:
        """`admin_url` with its database replaced; credentials and query parameters are kept."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))

    async def create_database(self, name: str) -> str:
        """Create `name` afresh (an existing one is dropped, its sessions ended) and return its URL."""
        conn = await asyncpg.connect(self.admin_url, timeout=ADMIN_TIMEOUT_S)
        try:
            await _drop(conn, name)
            await conn.execute(f"CREATE DATABASE {_ident(name)}")
        finally:
            await conn.close()
        return self.url_for(name)

    async def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, ending its sessions first."""
        conn = await asyncpg.connect(self.admin_url, timeout=ADMIN_TIMEOUT_S)
        try:
            await _drop(conn, name)
        finally:
            await conn.close()

    async def restart(self, mode: StopMode = "fast") -> None:
        """Restart a server we started, on the same port: `fast` ends sessions and checkpoints
        (`pg_ctl restart -m fast`); `immediate` stops like a crash, so the start runs recovery."""
        await self._own("restart").restart(mode)

    def stop(self) -> None:
        """Stop the server if this process started it; a no-op for servers found running."""
        if self.embedded is not None:
            self.embedded.stop()

    def _own(self, action: str) -> EmbeddedPostgres:
        if self.embedded is None:
            raise RuntimeError(
                f"cannot {action} a {self.kind} PostgreSQL server: only one this process started"
                f" (SMSFLOW_PG=embedded) can be restarted"
            )
        return self.embedded


async def resolve_server(data_dir: Path, prefer_local: bool = True) -> PostgresServer:
    """Find or start a server. `data_dir` is used only when an embedded server starts; it must be
    empty or hold a cluster from an earlier run. `prefer_local=False` skips the 127.0.0.1:5432 probe.

    An embedded server dies with the thread that called this (see `die_with_parent`), at exit, or
    at `stop()`.
    """
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "embedded", "local"):
        raise ValueError(f"{MODE_ENV}={mode!r}: expected 'embedded', 'local' or unset")
    if mode == "embedded":
        return await _start_embedded(data_dir)
    if mode == "local":
        if not await _answers(LOCAL_URL):
            raise RuntimeError(f"{MODE_ENV}=local but no PostgreSQL answers at {LOCAL_URL}")
        return PostgresServer(LOCAL_URL, "local")
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        return PostgresServer(env_url, "env")
    if prefer_local and await _answers(LOCAL_URL):
        return PostgresServer(LOCAL_URL, "local")
    return await _start_embedded(data_dir)


async def _start_embedded(data_dir: Path) -> PostgresServer:
    server = EmbeddedPostgres(data_dir)
    await server.start()
    log.info("embedded postgres on port %d (pid %s, data %s)", server.port, server.pid, server.data_dir)
    return PostgresServer(server.url(), "embedded", server)


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=LOCAL_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.debug("no usable PostgreSQL at %s: %r", url, exc)
        return False
    await conn.close()
    return True


async def _drop(conn: asyncpg.Connection, name: str) -> None:
    if conn.get_server_version().major >= 13:
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
        return
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )
    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
