"""Replay on the real broker and PostgreSQL: a rebuild from offset 0 gives the live projection's checksum,
and swapping it in keeps the API answering and the live consumer exact while events keep arriving."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from projector.app import create_app
from projector.rebuild import checksum, rebuild
from projector.synthetic import CampaignShape, Log

from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker
from tests.integration.projector.projector_harness import (
    a_log,
    campaign_counts,
    fetch,
    publish,
    reference,
    settings_for,
    wait_caught_up,
)

OPERATOR = {"X-Api-Key": "op-test-key"}
SHAPES = [
    CampaignShape(recipients=300, batch_size=40, reject_share=0.05, ambiguous_batch_share=0.1, max_reports=3,
                  unknown_reports=3, clicks=20, unsubscribes=3),
    CampaignShape(recipients=120, batch_size=25, reject_share=0.3, failed_batch_share=0.2, retry_failed=True,
                  max_reports=2, clicks=5),
    CampaignShape(recipients=60, batch_size=60, deferred_batch_share=0.5, max_reports=1),
]  # fmt: skip


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker per test: a consumer group's committed offsets belong with one database."""
    with TansuBroker() as b:
        yield b


@pytest.fixture(scope="module")
async def pg(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
async def database(pg: PostgresServer) -> AsyncIterator[str]:
    name = f"t_projector_rebuild_{secrets.token_hex(4)}"
    url = await pg.create_database(name)
    yield url
    await pg.drop_database(name)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://projector") as client,
    ):
        yield client


async def test_a_rebuild_of_finished_campaigns_has_the_live_checksum(
    broker: TansuBroker, database: str
) -> None:
    log = a_log(11, SHAPES)
    await publish(broker.bootstrap, log)
    app = create_app(settings_for(database, broker.bootstrap))
    async with running(app):
        await wait_caught_up(database, broker.bootstrap)
        live = await checksum(database)
        result = await rebuild(database, broker.bootstrap, swap=False, compare=True, poll_records=200)
        assert result.equal is True
        # The same in worker processes, as a large log is replayed: the per-schema lock keeps it exact.
        parallel = await rebuild(
            database, broker.bootstrap, swap=False, compare=True, poll_records=200, workers=2, parallel_from=0
        )
        assert parallel.equal is True
        assert parallel.events == result.events
        assert result.rebuilt_sums == result.live_sums
        assert live["live"]["digest"] == result.summary()["checksums"]["rebuilt"]
        assert result.events == len(log.in_order())
        assert await campaign_counts(database, "projector") == reference(log)
        schemas_left = await fetch(
            database, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'projector_%'"
        )
        assert schemas_left == []  # a dry run leaves nothing behind


async def test_the_swap_keeps_the_api_answering_and_the_live_consumer_exact(
    broker: TansuBroker, database: str
) -> None:
    first = a_log(21, SHAPES[:2], first_id=0)
    later = a_log(22, SHAPES, first_id=10_000_000)
    await publish(broker.bootstrap, first)
    app = create_app(settings_for(database, broker.bootstrap))
    async with running(app) as client:
        await wait_caught_up(database, broker.bootstrap)
        answers: list[int] = []
        stop = asyncio.Event()

        async def keep_reading() -> None:
            while not stop.is_set():
                page = await client.get("/api/campaigns", params={"pageSize": 5}, headers=OPERATOR)
                answers.append(page.status_code)
                if page.status_code == 200 and page.json()["items"]:
                    cid = page.json()["items"][0]["id"]
                    status = await client.get(f"/api/campaigns/{cid}/status", headers=OPERATOR)
                    answers.append(status.status_code)
                await asyncio.sleep(0.02)

        swapped = asyncio.Event()

        async def keep_publishing() -> None:
            parts = later.segments(10)
            for part in parts[:-2]:  # while the rebuild runs...
                await publish(broker.bootstrap, part)
                await asyncio.sleep(0.3)
            await swapped.wait()
            for part in parts[-2:]:  # ...and after its swap, whatever its speed
                await publish(broker.bootstrap, part)

        applied = [
            r["name"]
            for r in await fetch(database, "SELECT name FROM projector.schema_migrations ORDER BY name")
        ]
        reader = asyncio.create_task(keep_reading())
        writer = asyncio.create_task(keep_publishing())
        try:
            result = await rebuild(database, broker.bootstrap, swap=True, keep=True, poll_records=100)
        finally:
            swapped.set()
        await writer
        await wait_caught_up(database, broker.bootstrap)
        stop.set()
        await reader

        assert result.swapped
        whole_size = len(first.in_order()) + len(later.in_order())
        assert sum(result.positions.values()) < whole_size  # events kept arriving after the swap
        assert len(answers) > 10
        assert set(answers) == {200}
        whole = Log(partitions=first.partitions)
        whole.extend(first)
        whole.extend(later)
        assert await campaign_counts(database, "projector") == reference(whole)
        again = await rebuild(database, broker.bootstrap, swap=False, compare=True, poll_records=500)
        assert again.equal is True
        assert result.retired is not None
        kept = await checksum(database, against=result.retired)
        assert kept["against"]["schema"] == result.retired
        ledger = await fetch(database, "SELECT name FROM projector.schema_migrations ORDER BY name")
        assert [r["name"] for r in ledger] == applied  # the ledger moved with the swap: nothing re-applies
