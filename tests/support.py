"""Helpers the integration and end-to-end tests share: API calls, waiting, log inspection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from deploy.local.stack import LocalStack
from shared.broker import end_offsets as log_end_offsets


def greek_mobiles(start: int, count: int) -> list[str]:
    """Valid Greek mobile numbers in a consecutive range (the simulator's rejection rule is exact on them)."""
    return [f"+30694{n:07d}" for n in range(start, start + count)]


async def eventually(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 120.0,
    every: float = 0.5,
    what: str = "condition",
) -> Any:
    """Poll until `check` returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


class Api:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.http = httpx.AsyncClient(timeout=60.0)

    async def close(self) -> None:
        await self.http.aclose()

    async def new_tenant(
        self, name: str = "Demo shop", channel: str = "retail", credits: int = 10_000_000
    ) -> tuple[str, str]:
        """A tenant with an API key and, unless told otherwise, plenty of credits (one per SMS part)."""
        r = await self.http.post(
            f"{self.stack.url('enqueuer')}/api/tenants",
            json={"name": name, "channel": channel, "credits": credits},
            headers={"X-Api-Key": self.stack.operator_key},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body["tenant"]["id"], body["apiKey"]

    async def new_campaign(
        self, key: str, phones: list[str], text: str = "Hi {{first_name}}, 20% off today!", **extra: Any
    ) -> str:
        recipients = [{"phone": p, "firstName": f"Guest{i}"} for i, p in enumerate(phones)]
        r = await self.http.post(
            f"{self.stack.url('enqueuer')}/api/campaigns",
            json={"name": "Autumn sale", "text": text, "recipients": recipients, **extra},
            headers={"X-Api-Key": key},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def enqueue(self, key: str, campaign_id: str, idempotency_key: str | None = None) -> httpx.Response:
        headers = {"X-Api-Key": key}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self.http.post(
            f"{self.stack.url('enqueuer')}/api/campaigns/{campaign_id}/enqueue", headers=headers
        )

    async def status(self, key: str, campaign_id: str, *, not_yet_ok: bool = False) -> dict[str, Any]:
        """The projector's status body. With `not_yet_ok`, {} while the projector has not yet seen the
        tenant's key or the campaign (the read side follows the log)."""
        r = await self.http.get(
            f"{self.stack.url('projector')}/api/campaigns/{campaign_id}/status", headers={"X-Api-Key": key}
        )
        if not_yet_ok and r.status_code in (401, 404):
            return {}
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def sim(self, path: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.stack.url('mitto-sim')}{path}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_status(
        self, key: str, campaign_id: str, status: str, timeout: float = 180.0
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            body = await self.status(key, campaign_id, not_yet_ok=True)
            return body if body and body["campaign"]["status"] == status else None

        return dict(await eventually(reached, timeout=timeout, what=f"campaign {campaign_id} {status}"))


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or set())]
        if not tps:
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or set())]
        # shared.broker's end_offsets reads past the local broker's ListOffsets answer, which stops at the
        # first record of a partition's last record batch.
        return await log_end_offsets(bootstrap, [(tp.topic, tp.partition) for tp in tps]) if tps else {}
    finally:
        await consumer.stop()


async def caught_up(stack: LocalStack, consumers: dict[tuple[str, str], list[str]]) -> bool:
    """True when each (schema, consumer) stored a position at the end of every partition of its topics."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        for (schema, consumer), topics in consumers.items():
            ends = await end_offsets(stack.broker.bootstrap, topics)
            rows = await conn.fetch(
                f"SELECT topic, partition, next_offset FROM {schema}.consumer_position WHERE consumer = $1",
                consumer,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if any(end > stored.get(tp, 0) for tp, end in ends.items()):
                return False
        return True
    finally:
        await conn.close()


async def log_of(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes | None, bytes]]]:
    """Every (key, value) of `topic` by partition, in log order, read from the start with no consumer group."""
    ends = await end_offsets(bootstrap, [topic])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    out: dict[int, list[tuple[bytes | None, bytes]]] = {}
    try:
        tps = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = set(tps)
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, recs in batch.items():
                out.setdefault(tp.partition, []).extend((r.key, r.value or b"") for r in recs)
                if recs and recs[-1].offset + 1 >= ends[(tp.topic, tp.partition)]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def records_of(bootstrap: str, topic: str, key: bytes) -> list[tuple[bytes | None, bytes]]:
    """Every record of `topic` with `key` (all in one partition, so in log order)."""
    return [rec for recs in (await log_of(bootstrap, topic)).values() for rec in recs if rec[0] == key]


async def republish(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024, compression_type="lz4"
    )
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in records])
    finally:
        await producer.stop()
