"""The consumer contract on the real broker and PostgreSQL: positions in the effect's transaction,
redelivery filtered, dead letters with reasons, transient failures retried, a foreign log refused."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared import db
from shared.broker import (
    BatchConsumer,
    Delivery,
    LogPositionMismatch,
    TimeAlignment,
    assert_positions_within_log,
    byte_slices,
    end_offsets,
    ensure_topics,
    make_broker,
)
from shared.config import KafkaSettings, ServiceSettings
from shared.events import DeliveryReported, DeliveryStatus, decode, encode, envelope_for
from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import eventually

AT = datetime(2026, 11, 25, tzinfo=UTC)


@pytest.fixture(scope="module")
def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture(scope="module")
async def pg(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


@pytest.fixture
async def database(pg: PostgresServer) -> AsyncIterator[str]:
    name = f"t_consumer_{secrets.token_hex(4)}"
    url = await pg.create_database(name)
    await db.apply_migrations(url, "svc", ["shared"])
    async with asyncpg.create_pool(url, server_settings={"search_path": "svc"}) as pool:
        await pool.execute("CREATE TABLE applied (event_id text, message_id text)")
    yield url
    await pg.drop_database(name)


def settings(bootstrap: str, url: str) -> ServiceSettings:
    return ServiceSettings(
        database_url=url,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap, partitions=3, session_timeout_ms=6000, heartbeat_interval_ms=1000
        ),
    )


def report(message_id: str) -> bytes:
    event = DeliveryReported(
        provider_message_id=message_id,
        raw_status="Delivered",
        status=DeliveryStatus.DELIVERED,
        received_at=AT,
        source="webhook",
    )
    return encode(envelope_for(event, occurred_at=AT, tenant_id=None))


async def produce(bootstrap: str, topic: str, values: Sequence[bytes], *, at: int | None = None) -> None:
    """Keys cycle over three values (so over partitions); `at`: the records' timestamp (ms)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i, v in enumerate(values):
            await producer.send_and_wait(topic, v, key=str(i % 3).encode(), timestamp_ms=at)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        while sum(ends.values()) > len(out):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                out += recs
        return out
    finally:
        await consumer.stop()


async def applied_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT message_id FROM svc.applied ORDER BY message_id")]
    finally:
        await conn.close()


class Harness:
    """A BatchConsumer over `topic` whose effect is a row per event; `fail_on` makes chosen events fail."""

    def __init__(
        self,
        bootstrap: str,
        url: str,
        topic: str,
        *more_topics: str,
        alignment: TimeAlignment | None = None,
        max_records: int | None = None,
    ) -> None:
        self.settings = settings(bootstrap, url)
        self.url = url
        self.topics = (topic, *more_topics)
        self.max_records = max_records
        self.fail_on: dict[str, type[Exception]] = {}
        self.apply_delay_s = 0.0  # per event: a consumer slower than its log
        self.broker = make_broker(self.settings, "test")
        self.pool: asyncpg.Pool | None = None
        self.consumer = BatchConsumer(
            self.broker, lambda: self.pool, "tester", self.apply, alignment=alignment
        )  # type: ignore[arg-type,return-value]

    async def apply(self, conn: db.Conn, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            mid = d.event.provider_message_id  # type: ignore[attr-defined]
            await asyncio.sleep(self.apply_delay_s)
            await conn.execute("INSERT INTO applied VALUES ($1, $2)", d.envelope.event_id, mid)
            error = self.fail_on.get(mid)
            if error is not None:
                if error is OSError:
                    del self.fail_on[mid]  # transient: fails once
                raise error(f"cannot apply {mid}")

    async def __aenter__(self) -> Harness:
        self.pool = await db.create_pool(self.url, "svc")
        await ensure_topics(self.settings.kafka.bootstrap_servers, [*self.topics, "dlq.tester"], 3)
        self.consumer.subscribe(self.settings, *self.topics, max_records=self.max_records)
        await self.broker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()
        assert self.pool is not None
        await self.pool.close()


async def test_each_event_is_applied_once_even_when_the_poll_is_delivered_again(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 3)
    await produce(broker.bootstrap, topic, [report(f"m{i:02d}") for i in range(12)])
    async with Harness(broker.bootstrap, database, topic) as h:
        await eventually(lambda: _count(database, 12), what="12 events applied")
        records = await read_all(broker.bootstrap, topic)
        await h.consumer.process(records)  # the same records again, as after a rebalance
        await h.consumer.process(records[:5])
    assert await applied_ids(database) == [f"m{i:02d}" for i in range(12)]


async def test_an_undecodable_record_goes_to_the_dead_letter_topic_and_the_rest_is_applied(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic, "dlq.tester"], 3)
    dlq_before = len(await read_all(broker.bootstrap, "dlq.tester"))
    await produce(broker.bootstrap, topic, [report("a1"), b"{not an event", report("a2")])
    async with Harness(broker.bootstrap, database, topic):
        await eventually(lambda: _count(database, 2), what="the two good events applied")
        dead = await eventually(
            lambda: _dead_letters(broker.bootstrap, dlq_before + 1), what="one dead letter"
        )
    mine = [r for r in dead if r.value == b"{not an event"]
    assert len(mine) == 1
    headers = dict(mine[0].headers)
    assert b"not an event envelope" in headers["dlq-reason"]
    assert headers["dlq-consumer"] == b"tester"
    assert headers["dlq-source"].startswith(topic.encode())


async def test_an_event_whose_effect_fails_is_isolated_dead_lettered_and_its_batch_goes_on(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic, "dlq.tester"], 3)
    dlq_before = len(await read_all(broker.bootstrap, "dlq.tester"))
    await produce(broker.bootstrap, topic, [report(f"b{i}") for i in range(6)])
    async with Harness(broker.bootstrap, database, topic) as h:
        h.fail_on["b3"] = ValueError
        await eventually(lambda: _count(database, 5), what="five events applied")
        dead = await eventually(
            lambda: _dead_letters(broker.bootstrap, dlq_before + 1), what="one dead letter"
        )
    assert sorted(await applied_ids(database)) == ["b0", "b1", "b2", "b4", "b5"]  # b3's row rolled back
    assert any(b"ValueError: cannot apply b3" in dict(r.headers)["dlq-reason"] for r in dead)


async def test_a_follower_topic_is_applied_only_once_the_leader_has_passed_its_time(
    broker: TansuBroker, database: str
) -> None:
    """Behind its log, the consumer gets the follower's records (reports) first; held back, each is applied
    in the transaction that hands over the leader's record (a send result) stamped after it, or later."""
    # Small fetches, and a follower whose partitions the broker answers first: its backlog comes first.
    leader, follower = f"z.{secrets.token_hex(3)}", f"a.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [leader, follower, "dlq.tester"], 3)
    t0 = int(time.time() * 1000) - 60_000
    await produce(broker.bootstrap, follower, [report(f"f{i:04d}") for i in range(1500)], at=t0 + 10_000)
    # 300 leader records stamped before the follower's (any follower record read before all of them is
    # early), then one after; each partition is handed over in order.
    for i in range(300):
        await produce(broker.bootstrap, leader, [report(f"l{i:03d}")], at=t0 + 30 * i)
    await produce(broker.bootstrap, leader, [report("last")], at=t0 + 20_000)
    async with asyncpg.create_pool(database, server_settings={"search_path": "svc"}) as pool:
        await pool.execute("ALTER TABLE applied ADD COLUMN tx bigint DEFAULT txid_current()")
    alignment = TimeAlignment(follower, leader, max_hold_s=30.0)
    h = Harness(broker.bootstrap, database, leader, follower, alignment=alignment, max_records=200)
    small = {"fetch_max_bytes": 65_536, "partition_fetch_bytes": 32_768}
    h.settings = h.settings.model_copy(update={"kafka": h.settings.kafka.model_copy(update=small)})
    async with h:
        await eventually(lambda: _count(database, 1801), what="every record applied", timeout=60)
    conn = await asyncpg.connect(database)
    try:
        tx = {r["message_id"]: r["tx"] for r in await conn.fetch("SELECT message_id, tx FROM svc.applied")}
    finally:
        await conn.close()
    early = [m for m, t in tx.items() if m.startswith("f") and t < tx["last"]]
    assert early == [], f"{len(early)} follower records applied before the leader passed their time"
    assert not alignment.held  # nothing left paused


async def test_records_held_for_their_leader_survive_a_restart_and_are_applied_once(
    broker: TansuBroker, database: str
) -> None:
    """A follower partition held back is rewound before the poll is acknowledged: stopped while it is held,
    the consumer commits the held records' offsets, and the next one applies them, once."""
    leader, follower = f"z.{secrets.token_hex(3)}", f"a.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [leader, follower, "dlq.tester"], 3)
    t0 = int(time.time() * 1000) - 60_000
    await produce(broker.bootstrap, follower, [report(f"f{i:03d}") for i in range(300)], at=t0 + 10_000)
    await produce(broker.bootstrap, leader, [report(f"l{i:03d}") for i in range(300)], at=t0)
    small = {"fetch_max_bytes": 65_536, "partition_fetch_bytes": 32_768}
    alignment = TimeAlignment(follower, leader, max_hold_s=60.0)
    h = Harness(broker.bootstrap, database, leader, follower, alignment=alignment, max_records=50)
    h.settings = h.settings.model_copy(update={"kafka": h.settings.kafka.model_copy(update=small)})
    h.apply_delay_s = 0.02  # 300 leader records take 6 s: the follower is read, and held, well before
    async with h:
        await eventually(lambda: _held(alignment), what="a follower partition held")
    stopped_with = await applied_ids(database)
    assert len([m for m in stopped_with if m.startswith("l")]) < 300, "nothing was held at the stop"
    async with Harness(
        broker.bootstrap, database, leader, follower, alignment=TimeAlignment(follower, leader)
    ):
        await eventually(lambda: _count(database, 600), what="every record applied after the restart")
        await asyncio.sleep(1.0)
    everything = [f"f{i:03d}" for i in range(300)] + [f"l{i:03d}" for i in range(300)]
    assert sorted(await applied_ids(database)) == everything


async def _held(alignment: TimeAlignment) -> bool:
    return bool(alignment.held)


async def test_a_transient_failure_rewinds_and_the_event_is_applied_exactly_once(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 3)
    await produce(broker.bootstrap, topic, [report(f"c{i}") for i in range(4)])
    async with Harness(broker.bootstrap, database, topic) as h:
        h.fail_on["c2"] = OSError
        await eventually(lambda: _count(database, 4), what="all four applied after the retry", timeout=60)
        await asyncio.sleep(1.0)
    assert await applied_ids(database) == ["c0", "c1", "c2", "c3"]


async def test_a_big_poll_is_applied_in_slices_each_committed_with_its_positions(
    broker: TansuBroker, database: str
) -> None:
    """A failure in a later slice leaves the earlier slices applied; the retry applies the rest once."""
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 3)
    await produce(broker.bootstrap, topic, [report(f"e{i}") for i in range(10)])
    records = await read_all(broker.bootstrap, topic)
    h = Harness(broker.bootstrap, database, topic)
    h.pool = await db.create_pool(database, "svc")
    try:
        h.consumer.chunk_bytes = 3 * max(len(r.value) for r in records)
        slices = byte_slices(records, h.consumer.chunk_bytes)
        assert len(slices) >= 3
        h.fail_on[message_id(slices[-1][0])] = OSError
        with pytest.raises(OSError, match="cannot apply"):
            await h.consumer.process(records)
        assert await applied_ids(database) == sorted(message_id(r) for s in slices[:-1] for r in s)
        await h.consumer.process(records)  # the rewound poll, delivered again
    finally:
        await h.pool.close()
    assert await applied_ids(database) == sorted(f"e{i}" for i in range(10))


async def test_the_next_slice_is_read_while_one_is_applied_and_slices_commit_in_log_order(
    broker: TansuBroker, database: str
) -> None:
    """Each slice's effect waits until the next slice has been read: taking turns (read, apply, read...)
    would never get there."""
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    await produce(broker.bootstrap, topic, [report(f"s{i}") for i in range(10)])
    records = await read_all(broker.bootstrap, topic)
    h = Harness(broker.bootstrap, database, topic)
    h.pool = await db.create_pool(database, "svc")
    h.consumer.chunk_bytes = 3 * max(len(r.value) for r in records)
    slices = byte_slices(records, h.consumer.chunk_bytes)
    assert len(slices) >= 3
    index = {message_id(s[0]): i for i, s in enumerate(slices)}
    reads = 0
    read_one = asyncio.Condition()
    applied: list[str] = []
    read, apply = h.consumer._read, h.consumer.apply

    async def reading(recs: Sequence[Any]) -> Any:
        nonlocal reads
        out = await read(recs)
        async with read_one:
            reads += 1
            read_one.notify_all()
        return out

    async def applying(conn: db.Conn, deliveries: Sequence[Delivery]) -> None:
        i = index[deliveries[0].event.provider_message_id]  # type: ignore[attr-defined]
        if i < len(slices) - 1:
            async with asyncio.timeout(10), read_one:
                await read_one.wait_for(lambda: reads >= i + 2)  # slice i + 1 read
        await apply(conn, deliveries)
        applied.extend(d.event.provider_message_id for d in deliveries)  # type: ignore[attr-defined]

    h.consumer._read = reading  # type: ignore[method-assign]
    h.consumer.apply = applying
    try:
        await h.consumer.process(records)
    finally:
        await h.pool.close()
    assert applied == [message_id(r) for r in records]
    assert await applied_ids(database) == sorted(applied)


async def test_a_position_beyond_the_end_of_the_log_stops_the_service(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 3)
    await produce(broker.bootstrap, topic, [report("d0")])
    pool = await db.create_pool(database, "svc")
    try:
        ends = await end_offsets(broker.bootstrap, [(topic, 0), (topic, 1), (topic, 2)])
        async with pool.acquire() as conn, conn.transaction():
            await db.load_positions(conn, "tester", list(ends))
            await db.save_positions(conn, "tester", ends)  # exactly at the end: fine
        await assert_positions_within_log(pool, broker.bootstrap)
        async with pool.acquire() as conn, conn.transaction():
            await db.save_positions(conn, "tester", {(topic, 1): ends[(topic, 1)] + 50})
        with pytest.raises(LogPositionMismatch, match="belongs to another broker log"):
            await assert_positions_within_log(pool, broker.bootstrap)
    finally:
        await pool.close()


async def test_positions_never_move_backwards(database: str) -> None:
    pool = await db.create_pool(database, "svc")
    try:
        async with pool.acquire() as conn, conn.transaction():
            await db.load_positions(conn, "c", [("t", 0)])
            await db.save_positions(conn, "c", {("t", 0): 10})
            await db.save_positions(conn, "c", {("t", 0): 4})
            assert await db.load_positions(conn, "c", [("t", 0)]) == {("t", 0): 10}
    finally:
        await pool.close()


def message_id(record: Any) -> str:
    event = decode(record.value)[1]
    assert isinstance(event, DeliveryReported)
    return event.provider_message_id


async def _count(url: str, n: int) -> bool:
    return len(await applied_ids(url)) >= n


async def _dead_letters(bootstrap: str, n: int) -> list[Any] | None:
    records = await read_all(bootstrap, "dlq.tester")
    return records if len(records) >= n else None
