"""The webhook's publisher with several producers on the real broker: partitions are shared out between the
producers, and still every record lands once, in its key's partition, in the order its publisher was asked."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator

import pytest_asyncio
from dlr_ingest.encoding import partition_for
from dlr_ingest.publisher import BatchPublisher, make_producer

from shared.broker import ensure_topics
from shared.config import KafkaSettings, ServiceSettings
from shared.infra.tansu import TansuBroker
from tests.support import log_of

PARTITIONS = 6


@pytest_asyncio.fixture(scope="module")
async def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest_asyncio.fixture
async def publisher(broker: TansuBroker) -> AsyncIterator[BatchPublisher]:
    # The producer reads only the broker settings; no database is involved.
    settings = ServiceSettings(database_url="unused", kafka=KafkaSettings(bootstrap_servers=broker.bootstrap))
    publisher = BatchPublisher(
        lambda: make_producer(
            settings, linger_ms=0, batch_bytes=1024 * 1024, request_timeout_ms=30_000, compression="lz4"
        ),
        max_backlog_bytes=64 * 1024 * 1024,
        stall_after_s=10,
        compress_from_records=16,
        batch_bytes=1024 * 1024,
        connections=3,
    )
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


async def new_topic(broker: TansuBroker) -> str:
    topic = f"publisher.{secrets.token_hex(4)}"
    await ensure_topics(broker.bootstrap, [topic], PARTITIONS)
    return topic


async def test_concurrent_requests_land_once_each_in_their_keys_partition(
    broker: TansuBroker, publisher: BatchPublisher
) -> None:
    topic = await new_topic(broker)
    rng = random.Random(7)
    requests = [
        [(f"m-{r}-{i}".encode(), f"v-{r}-{i}".encode()) for i in range(rng.randint(1, 40))]
        for r in range(300)
    ]
    await asyncio.gather(*(publisher.publish(topic, records) for records in requests))

    log = await log_of(broker.bootstrap, topic)
    landed = [(partition, key, value) for partition, records in log.items() for key, value in records]
    assert sorted((k, v) for _, k, v in landed) == sorted(rec for records in requests for rec in records)
    assert all(partition == partition_for(key, PARTITIONS) for partition, key, _ in landed)
    assert len({partition for partition, _, _ in landed}) == PARTITIONS  # every producer had a share


async def test_what_one_caller_publishes_in_turn_stays_in_that_order_per_key(
    broker: TansuBroker, publisher: BatchPublisher
) -> None:
    topic = await new_topic(broker)

    async def in_turn(key: bytes) -> None:
        for step in range(15):
            await publisher.publish(topic, [(key, b"%d" % step)])

    keys = [f"key-{k}".encode() for k in range(40)]
    await asyncio.gather(*(in_turn(key) for key in keys))

    by_key: dict[bytes, list[int]] = defaultdict(list)
    for records in (await log_of(broker.bootstrap, topic)).values():
        for key, value in records:
            by_key[key].append(int(value))
    assert by_key == {key: list(range(15)) for key in keys}
