"""The read side on real PostgreSQL: a campaign caught mid-send lists its recipients as queued, processing,
sent and failed, pages them by cursor, filters them, finds its unreported messages for a status refresh,
and its counters agree with the list."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from projector import projection, reports
from projector.app import MIGRATIONS
from projector.store import reads
from projector.store.reads import CandidateScope, RecipientFilter
from projector.synthetic import BASE_TIME, Log, Record, report_bytes

from shared import db
from shared.broker import BatchConsumer
from shared.events import (
    BatchClaimed,
    BatchDeferred,
    BatchQueued,
    BatchRecipient,
    BatchSent,
    CampaignCreated,
    CampaignEnqueued,
    Channel,
    Event,
    MessageType,
    RecipientResult,
    RunKind,
)
from shared.infra.postgres import resolve_server
from shared.topics import CAMPAIGN_EVENTS, DELIVERY_REPORTS, SMS_BATCHES, SMS_OUTCOMES

TENANT = "0b5c9a52-61c4-4a8e-9a0e-3f3f5c0d1e2a"
CAMPAIGN = "7d0e7a3c-5b55-4c53-9b1e-6f2a9c4d8e10"
RUN = "run1"


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[asyncpg.Pool]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_projector_reads_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    await db.apply_migrations(url, "projector", MIGRATIONS)
    p = await db.create_pool(url, "projector", max_size=3)
    try:
        await project(p, mid_send_log().in_order())
        yield p
    finally:
        await p.close()
        await server.drop_database(name)
        server.stop()


def mid_send_log() -> Log:
    """Run of 4 batches of 5: #0 sent (4 accepted, 1 rejected) with reports, #1 claimed (processing),
    #2 deferred, #3 only queued; plus a report for a message nobody sent."""
    log = Log(partitions=1)
    seconds = iter(range(1, 10_000))

    def add(topic: str, event: Event) -> None:
        at = BASE_TIME + timedelta(seconds=next(seconds))
        log.append(topic, CAMPAIGN, event, occurred_at=at, tenant_id=TENANT, campaign_id=CAMPAIGN)

    add(CAMPAIGN_EVENTS, CampaignCreated(name="Mid send", text="Hi", sender_id=None, message_type=MessageType.MARKETING,
                                         channel=Channel.SHOPIFY, created_at=BASE_TIME))  # fmt: skip
    add(CAMPAIGN_EVENTS, CampaignEnqueued(run_token=RUN, run_kind=RunKind.INITIAL, total=20, campaign_total=20,
                                          batch_count=4, batch_size=5, credits_reserved=20, started_at=BASE_TIME))  # fmt: skip
    batches = [[(b * 5 + i + 1, f"+3069400000{b * 5 + i:02d}") for i in range(5)] for b in range(4)]
    for b, members in enumerate(batches):
        add(SMS_BATCHES, BatchQueued(batch_id=f"{CAMPAIGN}:{RUN}:{b}", run_token=RUN, batch_no=b, sender_id=None,
                                     template="Hi", message_type=MessageType.MARKETING,
                                     recipients=tuple(BatchRecipient(id=i, phone=p) for i, p in members)))  # fmt: skip
    ids0 = tuple(i for i, _ in batches[0])
    add(
        SMS_OUTCOMES,
        BatchClaimed(batch_id=f"{CAMPAIGN}:{RUN}:0", run_token=RUN, recipient_ids=ids0, claimed_at=BASE_TIME),
    )
    results = tuple(
        RecipientResult(
            id=i, phone=p, message_id=None if i == 5 else f"MSG{i:04d}", error="invalid" if i == 5 else None
        )
        for i, p in batches[0]
    )
    add(SMS_OUTCOMES, BatchSent(batch_id=f"{CAMPAIGN}:{RUN}:0", run_token=RUN, bulk_id="bulk-0", results=results,
                                retry_count=0, sent_at=BASE_TIME + timedelta(minutes=1)))  # fmt: skip
    ids1 = tuple(i for i, _ in batches[1])
    add(
        SMS_OUTCOMES,
        BatchClaimed(batch_id=f"{CAMPAIGN}:{RUN}:1", run_token=RUN, recipient_ids=ids1, claimed_at=BASE_TIME),
    )
    ids2 = tuple(i for i, _ in batches[2])
    add(SMS_OUTCOMES, BatchDeferred(batch_id=f"{CAMPAIGN}:{RUN}:2", run_token=RUN, recipient_ids=ids2, reason="paused",
                                    at=BASE_TIME))  # fmt: skip
    for mid, raw, status in (("MSG0001", "Delivered", "delivered"), ("MSG0002", "Failure", "failed"),
                             ("MSG0003", "Sent", "sent"), ("NOBODY", "Delivered", "delivered")):  # fmt: skip
        log.append_raw(
            DELIVERY_REPORTS, mid.encode(), report_bytes(mid, mid, raw, status, BASE_TIME, BASE_TIME)
        )
    return log


async def project(pool: asyncpg.Pool, records: list[Record]) -> None:
    consumer = BatchConsumer(None, lambda: pool, projection.CONSUMER, projection.apply)  # type: ignore[arg-type]
    await consumer.process(records)


async def listed(pool: asyncpg.Pool, **filters: Any) -> list[asyncpg.Record]:
    f = RecipientFilter(CAMPAIGN, filters.get("statuses"), filters.get("delivery"))
    async with pool.acquire() as conn:
        return await reads.recipients_page(
            conn, f, after_id=filters.get("after", 0), limit=filters.get("limit", 100)
        )


async def test_recipients_of_a_campaign_mid_send_have_their_seed_statuses(pool: asyncpg.Pool) -> None:
    rows = await listed(pool)
    assert [r["id"] for r in rows] == list(range(1, 21))
    by_status = {
        s: [r["id"] for r in rows if r["status"] == s] for s in ("sent", "failed", "processing", "queued")
    }
    assert by_status == {
        "sent": [1, 3, 4],  # 3 has a non-final report
        "failed": [2, 5],  # 2 reported Failure, 5 rejected at send
        "processing": [6, 7, 8, 9, 10],
        "queued": list(range(11, 21)),  # deferred and never claimed
    }
    first = rows[0]
    assert (first["delivery_status"], first["message_id"], first["bulk_id"]) == (
        "Delivered",
        "MSG0001",
        "bulk-0",
    )
    assert first["delivered_at"] is not None
    assert rows[1]["failed_at"] is not None
    assert rows[4]["error"] == "invalid"
    assert rows[10]["phone"] == "+306940000010"


async def test_filters_and_cursor_pages_agree_with_the_whole_list(pool: asyncpg.Pool) -> None:
    assert [r["id"] for r in await listed(pool, statuses=["queued", "processing"], limit=3)] == [6, 7, 8]
    assert [r["id"] for r in await listed(pool, statuses=["failed"])] == [2, 5]
    assert [r["id"] for r in await listed(pool, delivery="delivered")] == [1]
    assert [r["id"] for r in await listed(pool, delivery="")][:3] == [4, 5, 6]  # no report yet
    pages, after = [], 0
    while True:
        page = await listed(pool, limit=6, after=after)
        if not page:
            break
        pages.append([r["id"] for r in page])
        after = page[-1]["id"]
    assert [i for p in pages for i in p] == list(range(1, 21))


async def test_counters_match_the_list_and_unknown_reports_stay_parked(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        c = await conn.fetchrow("SELECT * FROM campaigns WHERE id = $1", CAMPAIGN)
        parked = await conn.fetchval("SELECT count(*) FROM parked_reports")
        breakdown = await reads.delivery_breakdown(conn, CAMPAIGN)
    assert c is not None
    assert (c["accepted"], c["rejected"], c["processing"], c["delivered"], c["delivery_failed"]) == (
        4,
        1,
        5,
        1,
        1,
    )
    assert parked == 1  # NOBODY's report waits for a send result that never comes
    assert breakdown == {"Delivered": 1, "Failure": 1, "Sent": 1}


async def test_refresh_candidates_are_the_unreported_accepted_messages(pool: asyncpg.Pool) -> None:
    later = BASE_TIME + timedelta(days=1)
    async with pool.acquire() as conn:
        found = await reports.refresh_candidates(conn, CandidateScope(later), 100)
        by_bulk = await reports.refresh_candidates(conn, CandidateScope(later, bulk_id="bulk-0"), 1)
        too_recent = await reports.refresh_candidates(conn, CandidateScope(BASE_TIME), 100)
    assert [i["messageId"] for i in found] == ["MSG0003", "MSG0004"]
    assert {i["tenantId"] for i in found} == {TENANT}
    assert [i["messageId"] for i in by_bulk] == ["MSG0003"]
    assert too_recent == []


async def test_outcomes_of_a_run_never_read_wait_and_the_reconciliation_report_lists_them(
    pool: asyncpg.Pool,
) -> None:
    """A claim whose run's CampaignEnqueued the projector never applied (say it was dead-lettered) moves
    no counter; it waits, and the operator's report names the run with what to do."""
    lost = "run-lost"
    log = Log(partitions=1)
    log.append(SMS_OUTCOMES, CAMPAIGN, BatchClaimed(batch_id=f"{CAMPAIGN}:{lost}:0", run_token=lost,
                                                     recipient_ids=(101, 102), claimed_at=BASE_TIME),
               occurred_at=BASE_TIME, tenant_id=TENANT, campaign_id=CAMPAIGN)  # fmt: skip
    async with pool.acquire() as conn:
        before = await conn.fetchrow("SELECT * FROM campaigns WHERE id = $1", CAMPAIGN)
    # Past the offsets the module's log used in that partition.
    await project(pool, [dataclasses.replace(r, offset=r.offset + 1000) for r in log.in_order()])
    async with pool.acquire() as conn:
        after = await conn.fetchrow("SELECT * FROM campaigns WHERE id = $1", CAMPAIGN)
        report = await reports.reconciliation(
            conn, BASE_TIME + timedelta(days=3650), delivery_hours=1, processing_minutes=1, stuck_minutes=1,
            limit=10,
        )  # fmt: skip
        fresh = await reports.reconciliation(
            conn, BASE_TIME, delivery_hours=1, processing_minutes=1, stuck_minutes=1, limit=10
        )
    assert after == before
    waiting = report["outcomesWaitingForRun"]
    assert (
        waiting["count"],
        [(i["runToken"], i["campaignId"], i["outcomes"]) for i in waiting["items"]],
    ) == (
        1,
        [(lost, CAMPAIGN, 1)],
    )
    assert "dlq.projector" in waiting["command"]
    assert fresh["outcomesWaitingForRun"]["count"] == 0  # parked just now: not yet waiting long
