"""Resolving a PostgreSQL server: the one on 127.0.0.1:5432 when it answers, a throwaway embedded server
on TCP when forced, and no embedded process left after stop or a killed parent."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from shared.infra.postgres import PostgresServer, resolve_server

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SMSFLOW_PG", raising=False)
    return monkeypatch


def local_port_open() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone between any check and the read of its status
        return False


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


async def query_in_fresh_database(server: PostgresServer, name: str) -> int:
    url = await server.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        return int(await conn.fetchval("SELECT 40 + 2"))
    finally:
        await conn.close()
        await server.drop_database(name)


async def test_default_resolution_finds_a_usable_server(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = await resolve_server(tmp_path / "pg")
    try:
        assert server.kind == ("local" if local_port_open() else "embedded")
        assert await query_in_fresh_database(server, "infra_default") == 42
    finally:
        server.stop()


async def test_database_url_is_used_as_is(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql://app:secret@db.example:6543/admin?sslmode=require")
    server = await resolve_server(tmp_path / "pg")
    assert (server.kind, server.embedded) == ("env", None)
    assert server.url_for("run_1") == "postgresql://app:secret@db.example:6543/run_1?sslmode=require"


async def test_a_server_we_did_not_start_cannot_be_restarted() -> None:
    with pytest.raises(RuntimeError, match="cannot restart a local"):
        await PostgresServer("postgresql://postgres@127.0.0.1:5432/postgres", "local").restart()


async def test_forced_embedded_server_serves_tcp_survives_restart_and_stops_cleanly(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("SMSFLOW_PG", "embedded")
    server = await resolve_server(tmp_path / "pg")
    try:
        assert server.kind == "embedded"
        assert server.embedded is not None
        assert server.admin_url.startswith("postgresql://postgres@127.0.0.1:")
        assert server.embedded.port != 5432
        assert await query_in_fresh_database(server, "infra_embedded") == 42

        url = await server.create_database("infra_restart")
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1)")
        await conn.close()
        await server.restart("immediate")
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT count(*) FROM kept") == 1
        await conn.close()

        postmaster = server.embedded.pid
        assert postmaster is not None
        pids = [postmaster, *(c.pid for c in psutil.Process(postmaster).children(recursive=True))]
        assert len(pids) > 1
    finally:
        server.stop()
    assert wait_gone(pids) == []
    assert not any(
        str(tmp_path) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
    )


def test_embedded_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from shared.infra.embedded_pg import EmbeddedPostgres\n"
        "server = EmbeddedPostgres(Path(sys.argv[1]))\n"
        "asyncio.run(server.start())\n"
        "print(server.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "pg")], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        postmaster = int(parent.stdout.readline())
        pids = [postmaster, *(c.pid for c in psutil.Process(postmaster).children(recursive=True))]
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(pids) == [], "postgres outlived its parent"
