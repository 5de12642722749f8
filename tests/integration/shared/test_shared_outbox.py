"""The outbox relay on the real broker and PostgreSQL: only committed rows, in order per key, then gone."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import db
from shared.broker import ensure_topics, make_broker
from shared.config import KafkaSettings, ServiceSettings
from shared.events import CampaignPaused, decode, envelope_for
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from shared.outbox import OutboxRelay
from tests.support import eventually

AT = datetime(2026, 11, 25, tzinfo=UTC)


@pytest.fixture(scope="module")
def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_outbox_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    await db.apply_migrations(url, "svc", ["shared"])
    yield url
    await server.drop_database(name)
    server.stop()


def message(topic: str, campaign: str, n: int) -> db.OutboxMessage:
    event = CampaignPaused(run_token=f"run-{n}", paused_at=AT)
    return db.OutboxMessage(
        topic, campaign, envelope_for(event, occurred_at=AT, tenant_id="t", campaign_id=campaign)
    )


async def consumed(bootstrap: str, topic: str) -> list[tuple[bytes, str]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes, str]] = []
        while len(out) < sum(ends.values()):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for r in recs:
                    _, event = decode(r.value)
                    out.append((r.key, event.run_token))  # type: ignore[attr-defined]
        return out
    finally:
        await consumer.stop()


async def test_committed_rows_are_published_in_order_per_key_and_removed(
    broker: TansuBroker, database: str
) -> None:
    topic = f"o.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 4)
    settings = ServiceSettings(database_url=database, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap))
    kafka = make_broker(settings, "outbox-test")
    await kafka.start()
    relay = OutboxRelay(database, "svc", kafka)
    task = asyncio.create_task(relay.run())
    pool = await db.create_pool(database, "svc")
    try:
        campaigns = [f"c{i}" for i in range(5)]
        async with pool.acquire() as conn:
            pending = conn.transaction()
            await pending.start()
            await db.add_outbox(conn, [message(topic, "uncommitted", 0)])
            for n in range(40):
                async with pool.acquire() as other, other.transaction():
                    await db.add_outbox(other, [message(topic, campaigns[n % 5], n)])
            await eventually(lambda: _published(broker.bootstrap, topic, 40), what="40 events published")
            await asyncio.sleep(0.5)
            assert len(await consumed(broker.bootstrap, topic)) == 40  # the open transaction's row is not out
            await pending.rollback()
        records = await consumed(broker.bootstrap, topic)
        for c in campaigns:
            tokens = [int(t.split("-")[1]) for k, t in records if k == c.encode()]
            assert tokens == sorted(tokens)
            assert len(tokens) == 8
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await kafka.stop()
        await pool.close()


async def test_a_second_relay_waits_while_the_first_holds_the_schema(
    broker: TansuBroker, database: str
) -> None:
    settings = ServiceSettings(database_url=database, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap))
    kafka = make_broker(settings, "outbox-test")
    await kafka.start()
    first, second = OutboxRelay(database, "svc", kafka), OutboxRelay(database, "svc", kafka)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await eventually(lambda: _one_leader(first, second), what="one leader")
        await asyncio.sleep(0.5)
        assert [first.is_leader, second.is_leader].count(True) == 1
    finally:
        first.stop()
        second.stop()
        await asyncio.wait(tasks, timeout=10)
        await kafka.stop()


async def _published(bootstrap: str, topic: str, n: int) -> bool:
    return len(await consumed(bootstrap, topic)) >= n


async def _one_leader(a: OutboxRelay, b: OutboxRelay) -> bool:
    return a.is_leader or b.is_leader
