"""Applies one consumed batch of events to the read models: set-based SQL per event kind, counters moved
by transitions. Any interleaving of the topics converges to the same rows (see domain.py for the rules)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from projector.domain import CampaignDelta, DeliveryState, merge_delivery, send_result_applies
from shared.broker import Delivery
from shared.db import Conn
from shared.events import (
    ApiKeyIssued,
    ApiKeyRevoked,
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchSent,
    CampaignCancelled,
    CampaignCompleted,
    CampaignCreated,
    CampaignEnqueued,
    CampaignFailed,
    CampaignPaused,
    CampaignScheduled,
    CampaignUpdated,
    CreditsDebited,
    CreditsReleased,
    CreditsReserved,
    DeliveryReported,
    TenantRegistered,
)

Deltas = dict[str, CampaignDelta]
SendRow = tuple[int, str, str, str, str, str | None, str | None, int, str | None, int, datetime]


async def apply(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    deltas: Deltas = defaultdict(CampaignDelta)
    tenants: dict[str, str] = {}
    queued: list[Delivery] = []
    reports: list[Delivery] = []
    for d in deliveries:
        e = d.event
        if d.envelope.campaign_id and d.envelope.tenant_id:
            tenants[d.envelope.campaign_id] = d.envelope.tenant_id
        if isinstance(e, BatchQueued):
            queued.append(d)
        elif isinstance(e, DeliveryReported):
            reports.append(d)
    # Order inside the poll follows the log for each topic; kinds are applied in this fixed order.
    for d in deliveries:
        await _apply_tenant_or_campaign_event(conn, d)
    await _apply_queued(conn, queued)
    await _apply_outcomes(conn, [d for d in deliveries if _is_outcome(d)], deltas)
    await _apply_reports(conn, reports, deltas)
    await _save_deltas(conn, deltas, tenants)


def _is_outcome(d: Delivery) -> bool:
    return isinstance(d.event, BatchClaimed | BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred)


async def _apply_tenant_or_campaign_event(conn: Conn, d: Delivery) -> None:
    e, env = d.event, d.envelope
    cid, at = env.campaign_id, env.occurred_at
    if isinstance(e, TenantRegistered):
        await conn.execute(
            """INSERT INTO tenants (id, name, channel, default_region) VALUES ($1, $2, $3, $4)
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, channel = EXCLUDED.channel,
                                              default_region = EXCLUDED.default_region""",
            env.tenant_id,
            e.name,
            e.channel.value,
            e.default_region,
        )
    elif isinstance(e, ApiKeyIssued):
        await conn.execute(
            "INSERT INTO api_keys (key_hash, key_id, tenant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            e.key_hash,
            e.key_id,
            env.tenant_id,
        )
    elif isinstance(e, ApiKeyRevoked):
        await conn.execute("UPDATE api_keys SET revoked = true WHERE key_id = $1", e.key_id)
    elif isinstance(e, CampaignCreated):
        await conn.execute(
            """INSERT INTO campaigns (id, tenant_id, name, message_text, message_type, channel, sender_id,
                                      created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, message_text = EXCLUDED.message_text,
                   message_type = EXCLUDED.message_type, channel = EXCLUDED.channel, sender_id = EXCLUDED.sender_id,
                   created_at = EXCLUDED.created_at""",
            cid,
            env.tenant_id,
            e.name,
            e.text,
            e.message_type.value,
            e.channel.value,
            e.sender_id,
            e.created_at,
        )
    elif isinstance(e, CampaignUpdated):
        await conn.execute(
            """UPDATE campaigns SET name = $2, message_text = $3, message_type = $4, sender_id = $5, updated_at = $6
               WHERE id = $1""",
            cid,
            e.name,
            e.text,
            e.message_type.value,
            e.sender_id,
            e.updated_at,
        )
    elif isinstance(e, CampaignScheduled):
        await _set_status(conn, cid, env.tenant_id, "scheduled", at, scheduled_at=e.scheduled_at)
    elif isinstance(e, CampaignEnqueued):
        await _set_status(
            conn,
            cid,
            env.tenant_id,
            "sending",
            at,
            run_token=e.run_token,
            total=e.campaign_total,
            started_at=e.started_at,
        )
    elif isinstance(e, CampaignPaused):
        await _set_status(conn, cid, env.tenant_id, "paused", at)
    elif isinstance(e, CampaignCancelled):
        await _set_status(conn, cid, env.tenant_id, "cancelled", at, finished_at=e.cancelled_at)
    elif isinstance(e, CampaignCompleted):
        await _set_status(conn, cid, env.tenant_id, "completed", at, finished_at=e.finished_at)
    elif isinstance(e, CampaignFailed):
        await _set_status(conn, cid, env.tenant_id, "failed", at, finished_at=e.finished_at)
    elif isinstance(e, CreditsReserved | CreditsDebited | CreditsReleased):
        column = {
            CreditsReserved: "credits_reserved",
            CreditsDebited: "credits_debited",
            CreditsReleased: "credits_released",
        }[type(e)]
        await conn.execute(f"UPDATE campaigns SET {column} = {column} + $2 WHERE id = $1", cid, e.credits)


async def _set_status(
    conn: Conn,
    campaign_id: str | None,
    tenant_id: str | None,
    status: str,
    at: datetime,
    *,
    run_token: str | None = None,
    total: int | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    scheduled_at: datetime | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, status, run_token, total, started_at, finished_at, scheduled_at,
                                  updated_at)
           VALUES ($1, $2, $3, $4, coalesce($5, 0), $6, $7, $8, $9)
           ON CONFLICT (id) DO UPDATE SET
               status = EXCLUDED.status,
               run_token = coalesce(EXCLUDED.run_token, campaigns.run_token),
               total = greatest(campaigns.total, EXCLUDED.total),
               started_at = coalesce(campaigns.started_at, EXCLUDED.started_at),
               finished_at = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                  ELSE coalesce(EXCLUDED.finished_at, campaigns.finished_at) END,
               scheduled_at = coalesce(EXCLUDED.scheduled_at, campaigns.scheduled_at),
               updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        status,
        run_token,
        total,
        started_at,
        finished_at,
        scheduled_at,
        at,
    )


async def _apply_queued(conn: Conn, queued: list[Delivery]) -> None:
    if not queued:
        return
    rows = []
    for d in queued:
        e = d.event
        assert isinstance(e, BatchQueued)
        members = orjson.dumps([[r.id, r.phone] for r in e.recipients]).decode()
        rows.append((e.batch_id, d.envelope.campaign_id, e.run_token, len(e.recipients), members))
    await conn.execute(
        """INSERT INTO batches (batch_id, campaign_id, run_token, size, status, recipients)
           SELECT b, c::uuid, r, s, 'queued', m::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],
                                                             $5::text[]) AS u(b, c, r, s, m)
           ON CONFLICT (batch_id) DO UPDATE SET size = EXCLUDED.size,
               recipients = CASE WHEN batches.status IN ('queued', 'processing') THEN EXCLUDED.recipients END""",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
    )


async def _apply_outcomes(conn: Conn, outcomes: list[Delivery], deltas: Deltas) -> None:
    """In log order: a claim moves a batch to processing; its first final outcome ends it."""
    send_rows: list[SendRow] = []
    for d in outcomes:
        e, cid = d.event, d.envelope.campaign_id or ""
        if isinstance(e, BatchClaimed):
            before = await _lock_batch(conn, e.batch_id)
            if before is None:
                await conn.execute(
                    """INSERT INTO batches (batch_id, campaign_id, run_token, size, claimed, status)
                       VALUES ($1, $2, $3, $4, $4, 'processing')""",
                    e.batch_id,
                    cid,
                    e.run_token,
                    len(e.recipient_ids),
                )
            elif before["status"] == "queued":
                await conn.execute(
                    "UPDATE batches SET status = 'processing', claimed = $2 WHERE batch_id = $1",
                    e.batch_id,
                    len(e.recipient_ids),
                )
            else:
                continue  # claimed before, or already finished
            deltas[cid].processing += len(e.recipient_ids)
            continue
        assert isinstance(e, BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred)
        status = {
            BatchSent: "sent",
            BatchFailed: "failed",
            BatchAmbiguous: "ambiguous",
            BatchDeferred: "deferred",
        }[type(e)]
        prev = await _lock_batch(conn, e.batch_id)
        if prev is None:
            await conn.execute(
                "INSERT INTO batches (batch_id, campaign_id, run_token, size, status) VALUES ($1, $2, $3, 0, $4)",
                e.batch_id,
                cid,
                e.run_token,
                status,
            )
        elif prev["status"] in ("queued", "processing"):
            await conn.execute(
                "UPDATE batches SET status = $2, recipients = NULL WHERE batch_id = $1", e.batch_id, status
            )
            if prev["status"] == "processing":
                deltas[cid].processing -= prev["claimed"]
        else:
            continue  # this batch already had its outcome: a duplicate
        send_rows += _send_rows(cid, e, prev["recipients"] if prev else None)
    await _write_send_results(conn, send_rows, deltas)


async def _lock_batch(conn: Conn, batch_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT status, claimed, recipients FROM batches WHERE batch_id = $1 FOR UPDATE", batch_id
    )


def _send_rows(campaign_id: str, e: Any, members: Any) -> list[SendRow]:
    """Recipient rows for one final outcome; phones of failed/ambiguous batches come from the batch row."""
    if isinstance(e, BatchSent):
        return [
            (
                r.id,
                campaign_id,
                r.phone,
                e.batch_id,
                "accepted" if r.message_id else "rejected",
                r.message_id,
                e.bulk_id,
                r.parts,
                r.error,
                e.retry_count,
                e.sent_at,
            )
            for r in e.results
            if r.duplicate_of is None
        ]
    if isinstance(e, BatchDeferred):
        return []
    phones = {int(i): p for i, p in (members or [])}
    status, error, at = (
        ("rejected", e.error, e.failed_at) if isinstance(e, BatchFailed) else ("ambiguous", e.reason, e.at)
    )
    return [
        (rid, campaign_id, phones.get(rid, ""), e.batch_id, status, None, None, 1, error, e.retry_count, at)
        for rid in e.recipient_ids
    ]


async def _write_send_results(conn: Conn, rows: list[SendRow], deltas: Deltas) -> None:
    if not rows:
        return
    ids = [r[0] for r in rows]
    previous = {
        r["id"]: r["status"]
        for r in await conn.fetch(
            "SELECT id, status FROM recipients WHERE id = ANY($1::bigint[]) FOR UPDATE", ids
        )
    }
    latest: dict[int, SendRow] = {}
    for row in rows:  # a later result for the same recipient in this poll wins, if it may
        before = latest[row[0]][4] if row[0] in latest else previous.get(row[0])
        if send_result_applies(before, row[4]):
            latest[row[0]] = row
    writes = list(latest.values())
    if not writes:
        return
    for row in writes:
        d = deltas[row[1]]
        d.send_status(previous.get(row[0]), -1)
        d.send_status(row[4], +1)
    columns = list(zip(*writes, strict=True))
    await conn.execute(
        """INSERT INTO recipients (id, campaign_id, phone, batch_id, status, message_id, bulk_id, parts, error,
                                   retry_count, sent_at, failed_at)
           SELECT id, c::uuid, phone, b, st, mid, bulk, parts, err, rc,
                  CASE WHEN st = 'accepted' THEN at END, CASE WHEN st = 'rejected' THEN at END
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::int[], $9::text[], $10::int[], $11::timestamptz[])
                AS u(id, c, phone, b, st, mid, bulk, parts, err, rc, at)
           ON CONFLICT (id) DO UPDATE SET phone = EXCLUDED.phone, batch_id = EXCLUDED.batch_id,
               status = EXCLUDED.status, message_id = EXCLUDED.message_id, bulk_id = EXCLUDED.bulk_id,
               parts = EXCLUDED.parts, error = EXCLUDED.error, retry_count = EXCLUDED.retry_count,
               sent_at = EXCLUDED.sent_at, failed_at = EXCLUDED.failed_at""",
        *[list(c) for c in columns],
    )
    # Reports that arrived before their send result have waited in `deliveries`: count them now.
    accepted = {r[5]: r[1] for r in writes if r[5]}
    if accepted:
        for rec in await conn.fetch(
            "SELECT message_id, status, raw_status, error, provider_time, reported_at FROM deliveries "
            "WHERE message_id = ANY($1::text[])",
            list(accepted),
        ):
            deltas[accepted[rec["message_id"]]].delivery(_state(rec), +1)


def _state(rec: asyncpg.Record) -> DeliveryState:
    return DeliveryState(
        rec["status"], rec["raw_status"], rec["error"], rec["provider_time"], rec["reported_at"]
    )


async def _apply_reports(conn: Conn, reports: list[Delivery], deltas: Deltas) -> None:
    if not reports:
        return
    incoming: dict[str, list[DeliveryState]] = defaultdict(list)
    for d in reports:
        e = d.event
        assert isinstance(e, DeliveryReported)
        incoming[e.provider_message_id].append(
            DeliveryState(e.status.value, e.raw_status, e.error, e.provider_time, d.envelope.occurred_at)
        )
    ids = list(incoming)
    current = {
        r["message_id"]: _state(r)
        for r in await conn.fetch(
            """SELECT message_id, status, raw_status, error, provider_time, reported_at FROM deliveries
           WHERE message_id = ANY($1::text[]) FOR UPDATE""",
            ids,
        )
    }
    changed: dict[str, tuple[DeliveryState | None, DeliveryState]] = {}
    for mid, states in incoming.items():
        before = current.get(mid)
        after = before
        for s in states:
            after = merge_delivery(after, s)
        if after is not None and after != before:
            changed[mid] = (before, after)
    if not changed:
        return
    rows = [
        (mid, s.status, s.raw_status, s.error, s.provider_time, s.reported_at)
        for mid, (_, s) in changed.items()
    ]
    await conn.execute(
        """INSERT INTO deliveries (message_id, status, raw_status, error, provider_time, reported_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
           ON CONFLICT (message_id) DO UPDATE SET status = EXCLUDED.status, raw_status = EXCLUDED.raw_status,
               error = EXCLUDED.error, provider_time = EXCLUDED.provider_time, reported_at = EXCLUDED.reported_at""",
        *[list(c) for c in zip(*rows, strict=True)],
    )
    # Only messages whose send result is known count toward a campaign; the rest wait for it.
    for rec in await conn.fetch(
        "SELECT message_id, campaign_id::text AS campaign_id FROM recipients WHERE message_id = ANY($1::text[])",
        list(changed),
    ):
        before, after = changed[rec["message_id"]]
        deltas[rec["campaign_id"]].delivery(before, -1)
        deltas[rec["campaign_id"]].delivery(after, +1)


async def _save_deltas(conn: Conn, deltas: Deltas, tenants: dict[str, str]) -> None:
    items = [(cid, d) for cid, d in deltas.items() if not d.is_empty()]
    if not items:
        return
    await conn.execute(
        """INSERT INTO campaigns AS c (id, tenant_id, accepted, rejected, ambiguous, delivered, delivery_failed,
                                       processing)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::int[], $6::int[], $7::int[],
                                $8::int[])
           ON CONFLICT (id) DO UPDATE SET accepted = c.accepted + EXCLUDED.accepted,
               rejected = c.rejected + EXCLUDED.rejected, ambiguous = c.ambiguous + EXCLUDED.ambiguous,
               delivered = c.delivered + EXCLUDED.delivered, delivery_failed = c.delivery_failed + EXCLUDED.delivery_failed,
               processing = c.processing + EXCLUDED.processing""",
        [cid for cid, _ in items],
        [tenants.get(cid) or await _tenant_of(conn, cid) for cid, _ in items],
        [d.accepted for _, d in items],
        [d.rejected for _, d in items],
        [d.ambiguous for _, d in items],
        [d.delivered for _, d in items],
        [d.delivery_failed for _, d in items],
        [d.processing for _, d in items],
    )
    breakdown = [(cid, raw, n) for cid, d in items for raw, n in d.breakdown.items() if n]
    if breakdown:
        await conn.execute(
            """INSERT INTO delivery_breakdown AS b (campaign_id, raw_status, count)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])
               ON CONFLICT (campaign_id, raw_status) DO UPDATE SET count = b.count + EXCLUDED.count""",
            [b[0] for b in breakdown],
            [b[1] for b in breakdown],
            [b[2] for b in breakdown],
        )


async def _tenant_of(conn: Conn, campaign_id: str) -> str | None:
    value = await conn.fetchval("SELECT tenant_id::text FROM campaigns WHERE id = $1", campaign_id)
    return str(value) if value else None
