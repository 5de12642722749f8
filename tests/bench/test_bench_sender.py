"""Benchmark: sender throughput against the Mitto simulator at 0 ms and 200 ms of provider latency.

In one run, for each latency, on one stack (broker, PostgreSQL, the simulator as its own process, the sender
as its own process):
- raw: the same bulk bodies the sender sends (5,000 items each), pre-encoded, POSTed with plain httpx with
  as many calls in flight as the sender allows itself (MAX_CONCURRENT_BULK_CALLS);
- BatchSender: the sender's send path driven directly in this process (decode, compose, claim, call,
  record, outcome events) in polls of BATCHES_PER_POLL, as its consumer does;
- service: the sender process itself, fed through the broker: from the first BatchQueued published to the
  last batch's outcome recorded (and the outbox drained to sms.outcomes);
- ceiling: only the two CPU stages every message needs before it can be posted (decoding the BatchQueued and
  composing each personalised text with its link tokens), with no I/O at all, on an idle core. No sender
  can outrun this rate, so its ratio to raw bounds what any sender's ratio can be.
Prints messages per second and the ratio to the raw rate; never asserts on speed.

    make bench
    BENCH_SENDER_BATCHES=60 .venv/bin/pytest -q -s -m bench tests/bench/test_bench_sender.py
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
import pytest
from sender import domain
from sender.intake import decode_batch
from sender.limits import TrafficLimits
from sender.locks import BatchLocks
from sender.mitto import MittoClient
from sender.sending import BatchSender
from sender.settings import SenderSettings

from deploy.local.stack import LocalStack, StackOptions
from shared.events import BatchQueued, BatchRecipient, MessageType, encode, envelope_for
from shared.service import tune_gc
from tests.support import republish

BATCHES = int(os.environ.get("BENCH_SENDER_BATCHES", "40"))
SIZE = 5000
CALLS = 8  # MAX_CONCURRENT_BULK_CALLS, the sender's default
POLL = 16  # BATCHES_PER_POLL, the sender's default


class NoMetrics:
    def batch_done(self, status: str, recipients: int) -> None:
        return None

    def provider_call(self, outcome: str, seconds: float) -> None:
        return None

    def retried(self, reason: str) -> None:
        return None


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[LocalStack]:
    s = LocalStack(StackOptions(services=("sender",), log_level="WARNING", sim={"webhook_url": ""}))
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


def campaign_batches(first_phone: int) -> tuple[str, list[bytes]]:
    """One campaign of BATCHES marketing batches (offer and unsubscribe links: the full composition)."""
    campaign = str(uuid.uuid4())
    at = datetime.now(UTC)
    raws = []
    for b in range(BATCHES):
        start = first_phone + b * SIZE
        batch = BatchQueued(
            batch_id=f"{campaign}:run:{b}",
            run_token="run",
            batch_no=b,
            sender_id="Shop",
            template="Hi {{first_name}}, 20% off everything today only!",
            message_type=MessageType.MARKETING,
            offer_url="https://shop.example/sale",
            recipients=tuple(
                BatchRecipient(
                    id=start + i, phone=f"+3069{start + i:08d}", values={"first_name": f"Guest{i}"}
                )
                for i in range(SIZE)
            ),
        )
        raws.append(encode(envelope_for(batch, occurred_at=at, tenant_id="bench", campaign_id=campaign)))
    return campaign, raws


def settings_for(stack: LocalStack) -> SenderSettings:
    return SenderSettings(
        database_url=stack.database_url,
        mitto_base_url=stack.url("mitto-sim"),
        mitto_api_key="local-sim-key",
        max_concurrent_bulk_calls=CALLS,
        batches_per_poll=POLL,
    )


def prepared_bodies(stack: LocalStack, raws: list[bytes]) -> tuple[list[bytes], float]:
    """The bulk bodies the sender would post, and the rate (messages/s) of decoding and composing them."""
    s = settings_for(stack)
    bodies = []
    composing = 0.0
    for raw in raws:
        started = time.perf_counter()
        cause, batch = decode_batch(raw)
        prepared = domain.prepare(
            batch,
            batch.recipients,
            campaign_id=cause.campaign_id,
            traffic_account=s.mitto_traffic_account_id,
            default_sender=s.mitto_sender,
            links=s.links,
        )
        composing += time.perf_counter() - started
        bodies.append(orjson.dumps({"messages": prepared.messages}))
    return bodies, len(raws) * SIZE / composing


async def raw_rate(stack: LocalStack, bodies: list[bytes]) -> float:
    s = settings_for(stack)
    gate = asyncio.Semaphore(CALLS)
    limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=CALLS)
    headers = {"X-Mitto-API-Key": "local-sim-key", "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=s.mitto_base_url, limits=limits, timeout=120, headers=headers
    ) as http:

        async def post(body: bytes) -> None:
            async with gate:
                r = await http.post(MittoClient.BULK_PATH, content=body)
                r.raise_for_status()
                orjson.loads(r.content)

        started = time.perf_counter()
        await asyncio.gather(*(post(b) for b in bodies))
        return len(bodies) * SIZE / (time.perf_counter() - started)


async def direct_rate(stack: LocalStack, raws: list[bytes]) -> float:
    s = settings_for(stack)
    pool = await asyncpg.create_pool(
        s.database_url, min_size=2, max_size=10, server_settings={"search_path": "sender,public"}
    )
    mitto = MittoClient(s.mitto_base_url, s.mitto_api_key, max_connections=CALLS * 2)
    locks = BatchLocks(s.database_url)
    sender = BatchSender(lambda: pool, mitto, s, NoMetrics(), locks, TrafficLimits(0, 1, CALLS))
    try:
        started = time.perf_counter()
        for first in range(0, len(raws), POLL):
            done = await asyncio.gather(*(sender.handle_record(r) for r in raws[first : first + POLL]))
            assert set(done) == {"sent"}, done
        return len(raws) * SIZE / (time.perf_counter() - started)
    finally:
        await locks.close()
        await mitto.aclose()
        await pool.close()


async def service_rate(stack: LocalStack, campaign: str, raws: list[bytes]) -> tuple[float, float]:
    """(messages/s until every outcome is recorded, messages/s until the outbox is drained to the broker)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        started = time.perf_counter()
        await republish(stack.broker.bootstrap, "sms.batches", [(campaign.encode(), r) for r in raws])
        recorded = drained = 0.0
        while not drained:
            finished = await conn.fetchval(
                "SELECT count(*) FROM sender.send_batches WHERE campaign_id = $1 AND status = 'sent'",
                campaign,
            )
            if finished == len(raws) and not recorded:
                recorded = time.perf_counter() - started
            if recorded and not await conn.fetchval("SELECT count(*) FROM sender.outbox"):
                drained = time.perf_counter() - started
            await asyncio.sleep(0.02)
        n = len(raws) * SIZE
        return n / recorded, n / drained
    finally:
        await conn.close()


@pytest.mark.bench
async def test_bench_sender_throughput_next_to_raw_posting(stack: LocalStack) -> None:
    tune_gc(SenderSettings.model_fields["gc_threshold"].default)  # as the service does at start
    rows = []
    phone = 0
    async with httpx.AsyncClient(base_url=stack.url("mitto-sim")) as sim:
        for latency in (0, 200):
            (await sim.patch("/sim/config", json={"latency_ms": latency})).raise_for_status()
            figures = {}
            for name in ("raw", "direct", "service"):
                campaign, raws = campaign_batches(phone)
                phone += BATCHES * SIZE
                if name == "raw":
                    bodies, figures["ceiling"] = prepared_bodies(stack, raws)
                    figures["raw"] = await raw_rate(stack, bodies)
                elif name == "direct":
                    figures["direct"] = await direct_rate(stack, raws)
                else:
                    figures["service"], figures["service+relay"] = await service_rate(stack, campaign, raws)
            rows.append((latency, figures))
    print(
        f"\nsender benchmark: {BATCHES} batches x {SIZE} recipients per measurement, {CALLS} calls in flight"
    )
    print(
        f"{'latency':>8} {'raw httpx':>11} {'BatchSender':>12} {'ratio':>6} {'service':>9} {'ratio':>6} "
        f"{'+outbox':>9} {'ceiling':>9} {'ratio':>6}"
    )
    for latency, f in rows:
        print(
            f"{latency:>6}ms {f['raw']:>9,.0f}/s {f['direct']:>10,.0f}/s {f['direct'] / f['raw']:>6.0%} "
            f"{f['service']:>7,.0f}/s {f['service'] / f['raw']:>6.0%} {f['service+relay']:>7,.0f}/s "
            f"{f['ceiling']:>7,.0f}/s {f['ceiling'] / f['raw']:>6.0%}"
        )
    print("ceiling: decoding and composing alone (no I/O, idle core); no sender's ratio can exceed its ratio")
