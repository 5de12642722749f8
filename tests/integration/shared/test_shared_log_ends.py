"""The end of a partition on the local broker, whose ListOffsets answers the base offset of the last record
batch + 1: a service that consumed a batch of several records must still start again (its stored position
is within the log), while a position past the real end is still refused."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import AIOKafkaProducer

from shared import db
from shared.broker import LogPositionMismatch, assert_positions_within_log, end_offsets, ensure_topics
from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker


@pytest.fixture(scope="module")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server: PostgresServer = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_log_ends_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    await db.apply_migrations(url, "svc", ["shared"])
    yield url
    await server.drop_database(name)
    server.stop()


async def produce_in_one_batch(bootstrap: str, topic: str, count: int) -> list[int]:
    """`count` records sent together, so the producer packs them into one compressed record batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50, compression_type="lz4")
    await producer.start()
    try:
        sent = [await producer.send(topic, b"x%d" % i, key=b"k", partition=0) for i in range(count)]
        return [m.offset for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()


async def test_the_end_of_a_partition_counts_every_record_of_its_last_batch(broker: TansuBroker) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 2)
    offsets = await produce_in_one_batch(broker.bootstrap, topic, 3)
    offsets += await produce_in_one_batch(broker.bootstrap, topic, 4)
    assert offsets == list(range(7))

    ends = await end_offsets(broker.bootstrap, [(topic, 0), (topic, 1)])

    assert ends == {(topic, 0): 7, (topic, 1): 0}


async def test_a_service_that_consumed_a_whole_batch_starts_again_and_one_beyond_the_log_does_not(
    broker: TansuBroker, database: str
) -> None:
    topic = f"t.{secrets.token_hex(3)}"
    await ensure_topics(broker.bootstrap, [topic], 1)
    await produce_in_one_batch(broker.bootstrap, topic, 5)
    pool = await db.create_pool(database, "svc")
    try:
        async with pool.acquire() as conn, conn.transaction():
            await db.load_positions(conn, "tester", [(topic, 0)])
            await db.save_positions(conn, "tester", {(topic, 0): 5})  # every record applied
        await assert_positions_within_log(pool, broker.bootstrap)

        async with pool.acquire() as conn, conn.transaction():
            await db.save_positions(conn, "tester", {(topic, 0): 6})
        with pytest.raises(LogPositionMismatch, match="belongs to another broker log"):
            await assert_positions_within_log(pool, broker.bootstrap)
    finally:
        await pool.close()
