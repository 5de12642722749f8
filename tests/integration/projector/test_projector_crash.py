"""A projector process killed in the middle of applying a batch (its transaction open, rows written,
positions locked) and started again counts nothing twice and loses nothing."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from projector.rebuild import rebuild
from projector.synthetic import CampaignShape

from shared.infra.ports import free_port
from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker
from shared.topics import (
    CAMPAIGN_EVENTS,
    DELIVERY_REPORTS,
    ENGAGEMENT_EVENTS,
    SMS_BATCHES,
    SMS_OUTCOMES,
    TENANT_EVENTS,
)
from tests.integration.projector.projector_harness import (
    PARTITIONS,
    a_log,
    campaign_counts,
    fetch,
    publish,
    reference,
    wait_caught_up,
)
from tests.support import eventually

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server: PostgresServer = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_projector_crash_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    yield url
    await server.drop_database(name)
    server.stop()


class ProjectorProcess:
    def __init__(self, url: str, bootstrap: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_URL"))},
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_PARTITIONS": str(PARTITIONS),
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "POLL_RECORDS": "2000",
            "LOG_JSON": "false",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; readiness is awaited below
                [sys.executable, "-m", "projector"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        async def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=60, every=0.2, what="the projector ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def test_a_projector_killed_mid_batch_counts_nothing_twice(
    broker: TansuBroker, database: str, tmp_path: Path
) -> None:
    shapes = [
        CampaignShape(recipients=3000, batch_size=500, reject_share=0.02, max_reports=2, clicks=30),
        CampaignShape(
            recipients=1500, batch_size=500, failed_batch_share=0.3, retry_failed=True, max_reports=2
        ),
    ]
    log = a_log(31, shapes, duplicates=0.05)
    projector = ProjectorProcess(database, broker.bootstrap, tmp_path / "projector.log")
    blocker = None
    try:
        await publish(broker.bootstrap, log, (TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES, ENGAGEMENT_EVENTS))
        await projector.start()
        await wait_caught_up(database, broker.bootstrap)

        # Hold the campaign rows: the next batch writes recipients and reports, then waits to move counters.
        blocker = await asyncpg.connect(database)
        await blocker.execute("BEGIN; LOCK TABLE projector.campaigns IN ACCESS EXCLUSIVE MODE")
        await publish(broker.bootstrap, log, (SMS_OUTCOMES, DELIVERY_REPORTS))

        async def stuck_mid_batch() -> bool:
            # From another session: a transaction sees one snapshot of pg_stat_activity.
            rows = await fetch(
                database,
                """SELECT query FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name = 'projector'
                     AND wait_event_type = 'Lock' AND state = 'active'""",
            )
            return any("INSERT INTO campaigns" in r["query"] for r in rows)

        await eventually(stuck_mid_batch, timeout=60, every=0.2, what="the projector waiting inside a batch")
        projector.kill()
        await blocker.execute("ROLLBACK")
        assert await blocker.fetchval("SELECT count(*) FROM projector.recipients") == 0  # rolled back with it

        await projector.start()
        await wait_caught_up(database, broker.bootstrap, timeout=180)
        assert await campaign_counts(database, "projector") == reference(log)
        fresh = await rebuild(database, broker.bootstrap, swap=False, compare=True, poll_records=1000)
        assert fresh.equal is True
    finally:
        projector.stop()
        if blocker is not None:
            await blocker.close()
