"""Property: every interleaving of the topics — shuffled across partitions, duplicated in the log, polls
delivered twice, any poll size — converges to the same read model (equal checksums), and that model holds
the counts an independent reference computes from the log."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projector import projection
from projector.app import MIGRATIONS
from projector.domain import DeliveryState, fold_reports, send_result_applies
from projector.store import schemas
from projector.synthetic import CampaignShape, Log, add_campaign, add_tenant, interleave
from projector.synthetic import Counter as Seq

from shared import db
from shared.broker import BatchConsumer
from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchSent,
    ContactUnsubscribed,
    CreditsDebited,
    DeliveryReported,
    LinkClicked,
    decode,
)
from shared.infra.postgres import resolve_server

SCHEMAS = ("conv_a", "conv_b")


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_projector_conv_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    for schema in SCHEMAS:
        await db.apply_migrations(url, schema, MIGRATIONS)
    yield url
    await server.drop_database(name)
    server.stop()


shapes = st.builds(
    CampaignShape,
    recipients=st.integers(1, 40),
    batch_size=st.sampled_from([1, 3, 7, 16]),
    reject_share=st.sampled_from([0.0, 0.2, 0.5]),
    failed_batch_share=st.sampled_from([0.0, 0.2]),
    ambiguous_batch_share=st.sampled_from([0.0, 0.2]),
    deferred_batch_share=st.sampled_from([0.0, 0.15]),
    max_reports=st.integers(0, 3),
    unknown_reports=st.integers(0, 2),
    clicks=st.integers(0, 6),
    unsubscribes=st.integers(0, 2),
    retry_failed=st.booleans(),
)


def build_log(seed: int, campaigns: list[CampaignShape], duplicate_share: float) -> Log:
    rng = random.Random(seed)
    log = Log(partitions=3)
    tenants = [add_tenant(log, rng) for _ in range(2)]
    recipient_ids, messages = Seq(), Seq()
    for i, shape in enumerate(campaigns):
        add_campaign(log, rng, tenants[i % 2], shape, recipient_ids, messages)
    log.duplicate(rng, duplicate_share)
    return log


async def project(url: str, schema: str, polls: list[list[Any]]) -> dict[str, schemas.TableSum]:
    """Feed polls through the live consumer's code path (positions, decode, apply) into `schema`."""
    pool = await db.create_pool(url, schema, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"TRUNCATE {', '.join(schemas.READ_MODELS)}, consumer_position")
        consumer = BatchConsumer(None, lambda: pool, projection.CONSUMER, projection.apply)  # type: ignore[arg-type]
        for poll in polls:
            await consumer.process(poll)
        async with pool.acquire() as conn:
            return await schemas.checksums(conn, schema)
    finally:
        await pool.close()


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
    send: dict[tuple[str, int], tuple[str, str | None]] = {}
    for env, e in events("sms.outcomes"):
        cid = env.campaign_id
        if isinstance(e, BatchClaimed):
            if e.batch_id not in finished and e.batch_id not in claimed:
                claimed[e.batch_id] = (cid, len(e.recipient_ids))
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
            before = send.get((cid, rid), (None, None))[0]
            if send_result_applies(before, kind):
                send[(cid, rid)] = (kind, mid)
    reports: dict[str, list[DeliveryState]] = defaultdict(list)
    for env, e in events("delivery.reports"):
        assert isinstance(e, DeliveryReported)
        reports[e.provider_message_id].append(
            DeliveryState(e.status.value, e.raw_status, e.error, e.provider_time, env.occurred_at)
        )
    for (cid, _), (kind, mid) in send.items():
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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    campaigns=st.lists(shapes, min_size=1, max_size=3),
    duplicate_share=st.sampled_from([0.0, 0.1, 0.3]),
    max_poll=st.integers(1, 60),
    redeliver=st.sampled_from([0.0, 0.2]),
)
def test_every_interleaving_converges_to_the_reference_read_model(
    database: str,
    seed: int,
    campaigns: list[CampaignShape],
    duplicate_share: float,
    max_poll: int,
    redeliver: float,
) -> None:
    log = build_log(seed, campaigns, duplicate_share)
    polls = interleave(log, random.Random(seed + 1), max_poll=max_poll, redeliver=redeliver)

    async def run() -> tuple[Any, Any, Any]:
        in_order = await project(database, "conv_a", [log.in_order()])
        shuffled = await project(database, "conv_b", polls)
        return in_order, shuffled, await campaign_counts(database, "conv_b")

    in_order, shuffled, counts = asyncio.run(run())
    assert shuffled == in_order
    assert counts == reference(log)


def test_the_reference_sees_what_the_generator_made(database: str) -> None:
    """Guard for the property above: the generated logs do exercise reports, rejections and engagement."""
    shape = CampaignShape(
        recipients=40, batch_size=7, reject_share=0.3, max_reports=3, clicks=5, unsubscribes=2
    )
    counts = next(iter(reference(build_log(7, [shape], 0.2)).values()))
    assert counts["status"] == "completed"
    assert counts["accepted"] > 0
    assert counts["rejected"] > 0
    assert counts["delivered"] > 0
    assert counts["clicks"] == 5
    assert counts["accepted"] + counts["rejected"] == 40
