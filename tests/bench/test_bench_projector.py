"""Projection rate for a 1,000,000-recipient campaign's events, next to the raw rate of one batched
`UPDATE … FROM unnest(…)` of the same rows measured in the same run, and the time of a full rebuild.

The events (BatchQueued x200, BatchClaimed x200, BatchSent x200 of 5,000 results, DeliveryReported x1M)
are applied as the live consumer applies them (per poll of the projector's configured size: stored
positions, `projection.apply`, one transaction), in the order they would arrive: every batch queued at
enqueue, then per batch its claim, its send result and its delivery reports (shuffled). Decoding (shared
`decode`, the same for every consumer) is timed on its own. A recipient update is one recipient's state
change: queued, processing, sent, and its delivery status.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from projector.app import MIGRATIONS
from projector.rebuild import checksum, rebuild
from projector.replay import apply_poll
from projector.settings import ProjectorSettings
from projector.synthetic import BASE_TIME, Record, report_bytes

from shared import db
from shared.broker import decode_records, ensure_topics
from shared.events import (
    ApiKeyIssued,
    BatchClaimed,
    BatchQueued,
    BatchRecipient,
    BatchSent,
    CampaignCompleted,
    CampaignCreated,
    CampaignEnqueued,
    Channel,
    Event,
    MessageType,
    RecipientResult,
    RunKind,
    TenantRegistered,
    encode,
    envelope_for,
)
from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker
from shared.topics import CAMPAIGN_EVENTS, DELIVERY_REPORTS, SMS_BATCHES, SMS_OUTCOMES, TENANT_EVENTS

pytestmark = pytest.mark.bench

RECIPIENTS = int(os.environ.get("BENCH_PROJECTOR_RECIPIENTS", "1000000"))  # smaller for a quick look
BATCH = 5_000
REPORT_PARTITIONS = 6
SHUFFLE_WINDOW = 20_000  # reports of a few batches arrive mixed


class Stream:
    """The bench's log: records in arrival order, offsets per partition."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.ends: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        offset = self.ends.get((topic, partition), 0)
        self.ends[(topic, partition)] = offset + 1
        self.records.append(Record(topic, partition, offset, key, value))


def campaign_log() -> Stream:
    rng = random.Random(1)
    tenant, cid, run = str(uuid.uuid4()), str(uuid.uuid4()), "benchrun"
    log = Stream()
    clock = iter(BASE_TIME + timedelta(milliseconds=i) for i in range(10**9))

    def add(topic: str, key: str, event: Event) -> None:
        env = envelope_for(
            event,
            occurred_at=next(clock),
            tenant_id=tenant,
            campaign_id=cid if topic != TENANT_EVENTS else None,
        )
        log.add(topic, 0, key.encode(), encode(env))

    add(
        TENANT_EVENTS,
        tenant,
        TenantRegistered(name="Bench shop", channel=Channel.RETAIL, default_region="GR"),
    )
    add(TENANT_EVENTS, tenant, ApiKeyIssued(key_id="key_bench", key_hash="0" * 64))
    add(CAMPAIGN_EVENTS, cid, CampaignCreated(name="Bench", text="Hi {{first_name}}", sender_id=None,
                                              message_type=MessageType.MARKETING, channel=Channel.RETAIL,
                                              created_at=next(clock)))  # fmt: skip
    batches = RECIPIENTS // BATCH
    add(CAMPAIGN_EVENTS, cid, CampaignEnqueued(run_token=run, run_kind=RunKind.INITIAL, total=RECIPIENTS,
                                               campaign_total=RECIPIENTS, batch_count=batches, batch_size=BATCH,
                                               credits_reserved=RECIPIENTS, started_at=next(clock)))  # fmt: skip
    ids = list(range(1, RECIPIENTS + 1))
    phones = [f"+30694{i:07d}" for i in ids]
    mids = [f"01KC69MT19{i:016d}" for i in ids]
    for b in range(batches):
        chunk = range(b * BATCH, (b + 1) * BATCH)
        add(SMS_BATCHES, cid, BatchQueued(batch_id=f"{cid}:{run}:{b}", run_token=run, batch_no=b, sender_id="Shop",
                                          template="Hi {{first_name}}", message_type=MessageType.MARKETING,
                                          recipients=tuple(BatchRecipient(id=ids[i], phone=phones[i],
                                                                          values={"first_name": "Guest"})
                                                           for i in chunk)))  # fmt: skip
    pending: list[int] = []
    for b in range(batches):
        bid, chunk = f"{cid}:{run}:{b}", range(b * BATCH, (b + 1) * BATCH)
        add(SMS_OUTCOMES, cid, BatchClaimed(batch_id=bid, run_token=run, recipient_ids=tuple(ids[i] for i in chunk),
                                            claimed_at=next(clock)))  # fmt: skip
        add(SMS_OUTCOMES, cid, BatchSent(batch_id=bid, run_token=run, bulk_id=f"bulk-{b}", retry_count=0,
                                         sent_at=next(clock),
                                         results=tuple(RecipientResult(id=ids[i], phone=phones[i], message_id=mids[i])
                                                       for i in chunk)))  # fmt: skip
        pending += chunk
        if len(pending) >= SHUFFLE_WINDOW or b == batches - 1:
            rng.shuffle(pending)
            for i in pending:
                at = next(clock)
                key = mids[i].encode()
                value = report_bytes(
                    str(uuid.UUID(int=rng.getrandbits(128))), mids[i], "Delivered", "delivered", at, at
                )
                log.add(DELIVERY_REPORTS, i % REPORT_PARTITIONS, key, value)
            pending = []
    add(
        CAMPAIGN_EVENTS,
        cid,
        CampaignCompleted(run_token=run, accepted=RECIPIENTS, failed=0, finished_at=next(clock)),
    )
    return log


@pytest.fixture(scope="module")
async def pg(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.stop()


async def raw_update_rate(url: str, poll: int) -> float:
    """Rows/s of `UPDATE … FROM unnest(…)` setting the delivery status of the same 1M recipients, in polls of
    the same size and the same order as the reports: a per-recipient read model's write, done set-based."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """CREATE TABLE bench_raw (id bigint PRIMARY KEY, campaign_id uuid NOT NULL, phone text NOT NULL,
                   status text NOT NULL, message_id text NOT NULL, delivery_status text, delivered_at timestamptz)"""
        )
        cid = uuid.uuid4()
        await conn.copy_records_to_table(
            "bench_raw",
            records=(
                (i, cid, f"+30694{i:07d}", "sent", f"01KC69MT19{i:016d}", None, None)
                for i in range(1, RECIPIENTS + 1)
            ),
        )
        await conn.execute("CREATE UNIQUE INDEX ON bench_raw (message_id)")
        await conn.execute("VACUUM ANALYZE bench_raw")
        rng = random.Random(2)
        order = list(range(1, RECIPIENTS + 1))
        for s in range(0, RECIPIENTS, SHUFFLE_WINDOW):
            window = order[s : s + SHUFFLE_WINDOW]
            rng.shuffle(window)
            order[s : s + SHUFFLE_WINDOW] = window
        at = BASE_TIME
        started = time.perf_counter()
        for s in range(0, RECIPIENTS, poll):
            chunk = order[s : s + poll]
            async with conn.transaction():
                await conn.execute(
                    """UPDATE bench_raw AS r SET status = 'sent', delivery_status = u.s, delivered_at = u.t
                       FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS u(id, s, t) WHERE r.id = u.id""",
                    chunk,
                    ["Delivered"] * len(chunk),
                    [at] * len(chunk),
                )
        return RECIPIENTS / (time.perf_counter() - started)
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_raw")
        await conn.close()


async def publish(bootstrap: str, log: Stream) -> float:
    await ensure_topics(
        bootstrap,
        [TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES, SMS_OUTCOMES, DELIVERY_REPORTS],
        REPORT_PARTITIONS,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, compression_type="lz4",
                                max_request_size=16 * 1024 * 1024, max_batch_size=1024 * 1024)  # fmt: skip
    started = time.perf_counter()
    await producer.start()
    try:
        last: dict[tuple[str, int], Record] = {}
        for r in log.records:
            last[(r.topic, r.partition)] = r
        tail = {id(r) for r in last.values()}
        futures = []
        for r in log.records:
            if id(r) not in tail:
                futures.append(await producer.send(r.topic, r.value, key=r.key, partition=r.partition))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        for r in last.values():  # alone in its batch: keeps Tansu's reported end offsets exact
            await producer.send_and_wait(r.topic, r.value, key=r.key, partition=r.partition)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def test_projection_rate_of_a_million_recipient_campaign(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = ProjectorSettings(database_url="postgresql://unused")
    poll = settings.poll_records
    thresholds = gc.get_threshold()
    name = f"bench_projector_{secrets.token_hex(4)}"
    url = await pg.create_database(name)
    try:
        made = time.perf_counter()
        log = campaign_log()
        made = time.perf_counter() - made
        # The bench's own millions of records live through the run: keep them out of the cyclic GC's scans,
        # which would otherwise bill the projection for a heap the service never has; and collect as often
        # as the service does (`tune_gc`): with the default threshold decoding here cost 44 us an event, not 27.
        gc.collect()
        gc.freeze()
        gc.set_threshold(settings.gc_threshold, *thresholds[1:])
        raw = await raw_update_rate(url, poll)

        await db.apply_migrations(url, "projector", MIGRATIONS)
        pool = await db.create_pool(url, "projector", max_size=2)
        elapsed, decoding = 0.0, 0.0
        async with pool.acquire() as conn:
            for records in chunks(log.records, poll):
                t = time.perf_counter()
                good, _ = decode_records(records)  # as the consumer decodes: timed on its own
                decoding += time.perf_counter() - t
                t = time.perf_counter()
                # Positions, apply, one transaction per poll: the consumer's path after decoding. (Polls of
                # 20,000 mix batches, outcomes and reports, so the time is not split by kind.)
                await apply_poll(conn, records, good)
                elapsed += time.perf_counter() - t
            row = await conn.fetchrow("SELECT accepted, delivered, processing, total FROM campaigns")
        await pool.close()
        assert row is not None
        assert tuple(row.values()) == (RECIPIENTS, RECIPIENTS, 0, RECIPIENTS)

        events = len(log.records)
        updates = 4 * RECIPIENTS  # queued, processing, sent, delivery status
        rate = updates / elapsed
        live = elapsed + decoding
        print(f"\nprojector: {events:,} events of a {RECIPIENTS:,}-recipient campaign, polls of {poll:,} "
              f"(events generated in {made:.1f} s)")  # fmt: skip
        print(f"  projection (apply, positions, commit per poll) {elapsed:6.1f} s  {events / elapsed:9,.0f} events/s  "
              f"{rate:9,.0f} recipient updates/s")  # fmt: skip
        print(f"  raw UPDATE … FROM unnest of the same rows, same polls and order: {raw:9,.0f} rows/s")
        print(f"  ratio: recipient updates/s ÷ raw rows/s = {rate / raw:4.2f}")
        print(f"  decoding the same events (shared.events.decode) {decoding:6.1f} s;  the live consumer decodes then "
              f"applies each poll: {live:6.1f} s, {updates / live:9,.0f} recipient updates/s")  # fmt: skip

        with TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "broker.log") as broker:
            produced = await publish(broker.bootstrap, log)
            del log
            gc.unfreeze()
            gc.collect()
            before = await checksum(url)
            result = await rebuild(url, broker.bootstrap, swap=True, keep=True, poll_records=poll)
            after = await checksum(url, against=result.retired)
        print(f"  full rebuild from offset 0 through the broker, and swap: {result.seconds:6.1f} s "
              f"({result.events / result.phases['replay']:,.0f} events/s replayed; log published in {produced:.1f} s)")  # fmt: skip
        print("    phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items()))
        print(f"    checksum of the live read models before {before['live']['digest']}, of the rebuilt ones "
              f"{after['live']['digest']}: equal {after['equal']}")  # fmt: skip
        assert after["equal"] is True
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        await pg.drop_database(name)
        gc.collect()


def chunks(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]
