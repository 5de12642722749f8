"""What the projector's integration tests share: a synthetic log published to the broker, the projector's
settings for a test database, and waiting until the live projection has read everything."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from projector.domain import DeliveryState, fold_reports, send_result_applies
from projector.projection import CONSUMER, TOPICS
from projector.settings import ProjectorSettings
from projector.synthetic import CampaignShape, Log, add_campaign, add_tenant
from projector.synthetic import Counter as Seq

from shared.broker import end_offsets, ensure_topics
from shared.config import KafkaSettings
from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchResolved,
    BatchSent,
    ContactUnsubscribed,
    CreditsDebited,
    DeliveryReported,
    LinkClicked,
    decode,
)
from shared.topics import all_topics_with_dead_letters

PARTITIONS = 3


def settings_for(url: str, bootstrap: str, **extra: Any) -> ProjectorSettings:
    return ProjectorSettings(
        database_url=url,
        operator_api_key="op-test-key",
        poll_records=500,
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            partitions=PARTITIONS,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        ),
        **extra,
    )


def a_log(
    seed: int, shapes: list[CampaignShape], *, duplicates: float = 0.1, tenants: int = 2, first_id: int = 0
) -> Log:
    """Campaigns of `shapes` for a few tenants; ids (recipients, messages) start after `first_id`, so that
    logs of different seeds can share a database."""
    rng = random.Random(seed)
    log = Log(partitions=PARTITIONS)
    owners = [add_tenant(log, rng) for _ in range(tenants)]
    recipient_ids, messages = Seq(first_id), Seq(first_id)
    for i, shape in enumerate(shapes):
        add_campaign(log, rng, owners[i % len(owners)], shape, recipient_ids, messages)
    log.duplicate(rng, duplicates)
    return log


async def publish(bootstrap: str, log: Log, topics: tuple[str, ...] = TOPICS) -> None:
    """Every record of `log` on the broker, in the log's own partitions and order."""
    await ensure_topics(bootstrap, all_topics_with_dead_letters(), PARTITIONS)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=8 * 1024 * 1024,
        compression_type="lz4",
    )
    await producer.start()
    try:
        last = []
        for (topic, part), stream in sorted(log.streams.items()):
            if topic in topics and stream:
                sends = [await producer.send(topic, v, key=k, partition=part) for k, v in stream[:-1]]
                await asyncio.gather(*sends)
                last.append((topic, part, *stream[-1]))
        # Each partition's last record alone in its batch: Tansu reports a partition's end as the base
        # offset of its last batch + 1, so this keeps end offsets (and the services' log check) exact.
        for topic, part, key, value in last:
            await producer.send_and_wait(topic, value, key=key, partition=part)
    finally:
        await producer.stop()


async def caught_up(url: str, bootstrap: str, schema: str = "projector") -> bool:
    """The projection stored a position at the end of every partition of its topics."""
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1)", f"{schema}.consumer_position")
        if exists is None:
            return False
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset FROM {schema}.consumer_position WHERE consumer = $1",
            CONSUMER,
        )
    finally:
        await conn.close()
    stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    ends = await end_offsets(bootstrap, [(t, p) for t in TOPICS for p in range(PARTITIONS)])
    return all(stored.get(tp, 0) >= end for tp, end in ends.items())


async def wait_caught_up(url: str, bootstrap: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await caught_up(url, bootstrap):
        if time.monotonic() > deadline:
            raise AssertionError("the projection did not reach the end of the log")
        await asyncio.sleep(0.3)


async def campaign_counts(url: str, schema: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"""SELECT id::text AS id, status, accepted, rejected, ambiguous, processing, delivered, delivery_failed,
                       clicks, clicked, unsubscribed, credits_debited FROM {schema}.campaigns"""
        )
        return {r["id"]: {k: v for k, v in dict(r).items() if k != "id"} for r in rows}
    finally:
        await conn.close()


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def reference(log: Log) -> dict[str, dict[str, Any]]:
    """The expected counts, computed from the log in plain Python (first outcome per batch, send results
    in order, reports folded per message in partition order, facts once per event id)."""
    records = log.records()

    def events(topic: str) -> Iterator[tuple[Any, Any]]:
        for (t, _), stream in records.items():
            if t == topic:
                for r in stream:
                    yield decode(r.value)

    out: dict[str, Counter[str]] = defaultdict(Counter)
    status: dict[str, str] = {}
    seen: set[str] = set()
    for env, e in events("campaign.events"):
        if env.event_id in seen:
            continue
        seen.add(env.event_id)
        if isinstance(e, CreditsDebited):
            out[env.campaign_id]["credits_debited"] += e.credits
        name = type(e).__name__
        if name in STATUS_OF:
            status[env.campaign_id] = STATUS_OF[name]
    finished: set[str] = set()
    claimed: dict[str, tuple[str, int]] = {}
    send: dict[tuple[str, int], tuple[str, str | None, str]] = {}  # (kind, message id, batch)

    def applies(cid: str, rid: int, kind: str, batch_id: str, resolution: bool) -> bool:
        kind_before, _, batch_before = send.get((cid, rid), (None, None, ""))
        return send_result_applies(
            kind_before, kind, resolution=resolution, same_batch=batch_before == batch_id
        )

    for env, e in events("sms.outcomes"):
        cid = env.campaign_id
        if isinstance(e, BatchClaimed):
            if e.batch_id not in finished and e.batch_id not in claimed:
                claimed[e.batch_id] = (cid, len(e.recipient_ids))
            continue
        if isinstance(e, BatchResolved):
            for r in e.results:
                kind = "accepted" if r.message_id else "rejected"
                if not r.duplicate_of and applies(cid, r.id, kind, e.batch_id, True):
                    send[(cid, r.id)] = (kind, r.message_id, e.batch_id)
            continue
        if e.batch_id in finished:
            continue
        finished.add(e.batch_id)
        claimed.pop(e.batch_id, None)
        results: list[tuple[int, str, str | None]] = []
        if isinstance(e, BatchSent):
            results = [
                (r.id, "accepted" if r.message_id else "rejected", r.message_id)
                for r in e.results
                if not r.duplicate_of
            ]
        elif isinstance(e, BatchFailed | BatchAmbiguous):
            kind = "rejected" if isinstance(e, BatchFailed) else "ambiguous"
            results = [(rid, kind, None) for rid in e.recipient_ids]
        else:
            assert isinstance(e, BatchDeferred)
        for rid, kind, mid in results:
            if applies(cid, rid, kind, e.batch_id, False):
                send[(cid, rid)] = (kind, mid, e.batch_id)
    reports: dict[str, list[DeliveryState]] = defaultdict(list)
    for env, e in events("delivery.reports"):
        assert isinstance(e, DeliveryReported)
        reports[e.provider_message_id].append(
            DeliveryState(e.status.value, e.raw_status, e.error, e.provider_time, env.occurred_at)
        )
    for (cid, _), (kind, mid, _) in send.items():
        out[cid][kind] += 1
        state = fold_reports(None, reports.get(mid or "", []))
        if kind == "accepted" and state is not None:
            out[cid]["delivered"] += state.status == "delivered"
            out[cid]["delivery_failed"] += state.status == "failed"
    for cid, n in claimed.values():
        out[cid]["processing"] += n
    clicked: set[tuple[str, int]] = set()
    unsubscribed: set[tuple[str, int]] = set()
    for env, e in events("engagement.events"):
        if env.event_id in seen:
            continue
        seen.add(env.event_id)
        if isinstance(e, LinkClicked):
            out[env.campaign_id]["clicks"] += 1
            clicked.add((env.campaign_id, e.recipient_id))
        elif isinstance(e, ContactUnsubscribed):
            unsubscribed.add((env.campaign_id, e.recipient_id))
    for cid, _ in clicked:
        out[cid]["clicked"] += 1
    for cid, _ in unsubscribed:
        out[cid]["unsubscribed"] += 1
    keys = ("accepted", "rejected", "ambiguous", "processing", "delivered", "delivery_failed", "clicks", "clicked",
            "unsubscribed", "credits_debited")  # fmt: skip
    return {cid: {"status": status[cid], **{k: out[cid][k] for k in keys}} for cid in status}


STATUS_OF = {
    "CampaignEnqueued": "sending",
    "CampaignCompleted": "completed",
    "CampaignFailed": "failed",
    "CampaignPaused": "paused",
    "CampaignCancelled": "cancelled",
    "CampaignScheduled": "scheduled",
}
