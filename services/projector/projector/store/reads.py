"""SQL of the read API and the operator reports. Every tenant-facing query takes the viewer's tenant id
(None only for the operator key) and filters on it in SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Conn


async def tenant_for_key(conn: Conn, key_hash: str) -> str | None:
    value = await conn.fetchval(
        "SELECT tenant_id::text FROM api_keys WHERE key_hash = $1 AND NOT revoked", key_hash
    )
    return str(value) if value else None


async def campaign(conn: Conn, tenant_id: str | None, campaign_id: str) -> asyncpg.Record | None:
    """The campaign row, only when it belongs to `tenant_id` (None: operator, any tenant)."""
    return await conn.fetchrow(
        "SELECT * FROM campaigns WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2::uuid)",
        campaign_id,
        tenant_id,
    )


async def delivery_breakdown(conn: Conn, campaign_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT raw_status, count FROM delivery_breakdown WHERE campaign_id = $1 AND count <> 0 ORDER BY raw_status",
        campaign_id,
    )
    return {r["raw_status"]: r["count"] for r in rows}


# --- campaign list -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignFilter:
    tenant_id: str | None
    statuses: list[str] | None
    channel: str | None
    search: str | None


# Shared by the page and the totals so that both describe the same set of campaigns.
_FILTER = """($1::uuid IS NULL OR tenant_id = $1::uuid)
             AND ($2::text[] IS NULL OR status = ANY($2::text[]))
             AND ($3::text IS NULL OR channel = $3::text)
             AND ($4::text IS NULL OR name ILIKE '%' || $4::text || '%' ESCAPE '\\')"""


def _filter_args(f: CampaignFilter) -> list[Any]:
    search = None
    if f.search:
        search = f.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [f.tenant_id, f.statuses, f.channel, search]


async def list_campaigns(
    conn: Conn,
    f: CampaignFilter,
    *,
    limit: int,
    after: tuple[datetime, str] | None = None,
    offset: int = 0,
) -> list[asyncpg.Record]:
    """Newest first, by (created_at, id); `after` is the keyset cursor (the last row of the previous page)."""
    return await conn.fetch(
        f"""SELECT * FROM campaigns
            WHERE {_FILTER}
              AND ($5::timestamptz IS NULL
                   OR (coalesce(created_at, '-infinity'), id) < ($5::timestamptz, $6::uuid))
            ORDER BY coalesce(created_at, '-infinity') DESC, id DESC
            LIMIT $7 OFFSET $8""",
        *_filter_args(f),
        after[0] if after else None,
        after[1] if after else None,
        limit,
        offset,
    )


async def campaign_totals(conn: Conn, f: CampaignFilter) -> tuple[asyncpg.Record, dict[str, int]]:
    """Sums over the filtered campaigns (the same counters, one meaning each) and their count by status."""
    row = await conn.fetchrow(
        f"""SELECT count(*)::int AS campaigns, coalesce(sum(total), 0)::bigint AS total,
                   coalesce(sum(accepted), 0)::bigint AS accepted, coalesce(sum(rejected), 0)::bigint AS rejected,
                   coalesce(sum(delivered), 0)::bigint AS delivered,
                   coalesce(sum(delivery_failed), 0)::bigint AS delivery_failed,
                   coalesce(sum(processing), 0)::bigint AS processing, coalesce(sum(ambiguous), 0)::bigint AS ambiguous,
                   coalesce(sum(clicked), 0)::bigint AS clicked, coalesce(sum(clicks), 0)::bigint AS clicks,
                   coalesce(sum(unsubscribed), 0)::bigint AS unsubscribed,
                   coalesce(sum(credits_debited), 0)::bigint AS credits_debited
            FROM campaigns WHERE {_FILTER}""",
        *_filter_args(f),
    )
    by_status = await conn.fetch(
        f"SELECT status, count(*)::int AS n FROM campaigns WHERE {_FILTER} GROUP BY status", *_filter_args(f)
    )
    assert row is not None
    return row, {r["status"]: r["n"] for r in by_status}


async def totals_by_tenant_and_channel(conn: Conn, tenant_id: str | None) -> list[asyncpg.Record]:
    """Totals per (tenant, channel), from the campaign rows (so they can never disagree with them)."""
    return await conn.fetch(
        """SELECT c.tenant_id::text AS tenant_id, t.name AS tenant_name, c.channel, count(*)::int AS campaigns,
                  sum(c.total)::bigint AS total, sum(c.accepted)::bigint AS accepted,
                  sum(c.rejected)::bigint AS rejected, sum(c.delivered)::bigint AS delivered,
                  sum(c.delivery_failed)::bigint AS delivery_failed, sum(c.processing)::bigint AS processing,
                  sum(c.ambiguous)::bigint AS ambiguous, sum(c.clicked)::bigint AS clicked,
                  sum(c.clicks)::bigint AS clicks, sum(c.unsubscribed)::bigint AS unsubscribed,
                  sum(c.credits_debited)::bigint AS credits_debited
           FROM campaigns c LEFT JOIN tenants t ON t.id = c.tenant_id
           WHERE $1::uuid IS NULL OR c.tenant_id = $1::uuid
           GROUP BY 1, 2, 3 ORDER BY 3, 2, 1""",
        tenant_id,
    )


# --- recipients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipientFilter:
    campaign_id: str
    statuses: list[str] | None  # queued | processing | sent | failed | ambiguous
    delivery_status: str | None  # raw provider status, any case; "" for "no report yet"


# Members of the campaign's current run still in an open (or deferred) batch are queued or processing;
# everyone else with a send result comes from `recipients` joined with the report of their message.
_RECIPIENTS = """
WITH open AS (
    SELECT m.id, m.phone, b.batch_id, b.status AS batch_status
    FROM campaigns c
    JOIN batches b ON b.campaign_id = c.id AND b.run_token = c.run_token
                  AND b.status IN ('queued', 'processing', 'deferred') AND coalesce(b.max_id, 0) > $2
    CROSS JOIN LATERAL unnest(b.member_ids, b.member_phones) AS m(id, phone)
    WHERE c.id = $1
)
SELECT * FROM (
    SELECT o.id, o.phone, o.batch_id, CASE o.batch_status WHEN 'processing' THEN 'processing' ELSE 'queued' END
               AS status,
           NULL::text AS send_status, NULL::text AS message_id, NULL::text AS bulk_id, NULL::text AS delivery_status,
           NULL::text AS delivery_state, NULL::text AS error, 0 AS retry_count, 1 AS parts,
           NULL::timestamptz AS sent_at, NULL::timestamptz AS delivered_at, NULL::timestamptz AS failed_at
    FROM open o
    WHERE o.id > $2 AND ($5::text IS NULL OR $5::text = '')
      AND ($4::text[] IS NULL
           OR (CASE o.batch_status WHEN 'processing' THEN 'processing' ELSE 'queued' END) = ANY($4::text[]))
    UNION ALL
    SELECT r.id, r.phone, r.batch_id,
           CASE WHEN r.status = 'accepted' THEN CASE WHEN d.status = 'failed' THEN 'failed' ELSE 'sent' END
                WHEN r.status = 'rejected' THEN 'failed' ELSE r.status END AS status,
           r.status, r.message_id, r.bulk_id, d.raw_status, d.status, coalesce(d.error, r.error), r.retry_count,
           r.parts, r.sent_at,
           CASE WHEN d.status = 'delivered' THEN coalesce(d.provider_time, d.reported_at) END,
           coalesce(r.failed_at, CASE WHEN d.status = 'failed' THEN coalesce(d.provider_time, d.reported_at) END)
    FROM recipients r LEFT JOIN deliveries d ON d.message_id = r.message_id
    WHERE r.campaign_id = $1 AND r.id > $2 AND NOT EXISTS (SELECT 1 FROM open o WHERE o.id = r.id)
      AND ($4::text[] IS NULL
           OR (CASE WHEN r.status = 'accepted' THEN CASE WHEN d.status = 'failed' THEN 'failed' ELSE 'sent' END
                    WHEN r.status = 'rejected' THEN 'failed' ELSE r.status END) = ANY($4::text[]))
      AND ($5::text IS NULL OR ($5::text = '' AND d.message_id IS NULL) OR lower(d.raw_status) = lower($5::text))
) page
ORDER BY id
"""


async def recipients_page(
    conn: Conn, f: RecipientFilter, *, after_id: int, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        _RECIPIENTS + "LIMIT $3", f.campaign_id, after_id, limit, f.statuses, f.delivery_status
    )


async def stream_recipients(
    conn: Conn, f: RecipientFilter, *, prefetch: int = 2000
) -> AsyncIterator[asyncpg.Record]:
    """Every matching recipient in id order, through a server-side cursor (the caller holds a transaction)."""
    async for row in conn.cursor(
        _RECIPIENTS + "LIMIT $3", f.campaign_id, 0, None, f.statuses, f.delivery_status, prefetch=prefetch
    ):
        yield row


# --- operator: status refresh and reconciliation -----------------------------------------------------


@dataclass(frozen=True)
class CandidateScope:
    cutoff: datetime
    campaign_id: str | None = None
    bulk_id: str | None = None


async def pending_batches(
    conn: Conn, scope: CandidateScope, limit: int | None = None
) -> list[asyncpg.Record]:
    """Batches with accepted messages still waiting for a final report, sent before the cutoff, oldest first."""
    return await conn.fetch(
        """SELECT b.batch_id, b.campaign_id::text AS campaign_id, c.tenant_id::text AS tenant_id, b.bulk_id,
                  b.min_id, b.max_id, b.finished_at, (b.accepted - b.delivered - b.delivery_failed) AS pending
           FROM batches b JOIN campaigns c ON c.id = b.campaign_id
           WHERE b.accepted > b.delivered + b.delivery_failed AND b.finished_at < $1
             AND ($2::uuid IS NULL OR b.campaign_id = $2::uuid) AND ($3::text IS NULL OR b.bulk_id = $3::text)
           ORDER BY b.finished_at, b.batch_id
           LIMIT $4""",
        scope.cutoff,
        scope.campaign_id,
        scope.bulk_id,
        limit,
    )


async def unreported_messages(
    conn: Conn, batch: asyncpg.Record, cutoff: datetime, limit: int
) -> list[asyncpg.Record]:
    """Accepted messages of one batch without a final report, sent before the cutoff, oldest first."""
    return await conn.fetch(
        """SELECT r.message_id, r.sent_at FROM recipients r LEFT JOIN deliveries d ON d.message_id = r.message_id
           WHERE r.campaign_id = $1::uuid AND r.batch_id = $2 AND r.id BETWEEN $3 AND $4
             AND r.status = 'accepted' AND r.sent_at < $5
             AND (d.status IS NULL OR d.status NOT IN ('delivered', 'failed'))
           ORDER BY r.sent_at, r.id LIMIT $6""",
        batch["campaign_id"],
        batch["batch_id"],
        batch["min_id"] if batch["min_id"] is not None else -(2**63),
        batch["max_id"] if batch["max_id"] is not None else 2**63 - 1,
        cutoff,
        limit,
    )


async def stuck_processing(
    conn: Conn, cutoff: datetime, limit: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    summary = await conn.fetchrow(
        """SELECT count(*)::int AS batches, coalesce(sum(size), 0)::bigint AS recipients
           FROM batches WHERE status = 'processing' AND claimed_at < $1""",
        cutoff,
    )
    rows = await conn.fetch(
        """SELECT b.batch_id, b.campaign_id::text AS campaign_id, c.tenant_id::text AS tenant_id,
                  b.size AS claimed, b.claimed_at
           FROM batches b JOIN campaigns c ON c.id = b.campaign_id
           WHERE b.status = 'processing' AND b.claimed_at < $1 ORDER BY b.claimed_at LIMIT $2""",
        cutoff,
        limit,
    )
    assert summary is not None
    return summary, rows


async def waiting_for_run(
    conn: Conn, cutoff: datetime, limit: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Runs with outcomes from before `cutoff` still waiting for their CampaignEnqueued."""
    summary = await conn.fetchrow(
        """SELECT count(*)::int AS runs, coalesce(sum(n), 0)::bigint AS outcomes
           FROM (SELECT count(*) AS n FROM parked_outcomes GROUP BY run_token
                 HAVING min(occurred_at) < $1) AS w""",
        cutoff,
    )
    rows = await conn.fetch(
        """SELECT run_token, min(campaign_id::text) AS campaign_id, count(*)::int AS outcomes,
                  min(occurred_at) AS waiting_since
           FROM parked_outcomes GROUP BY run_token HAVING min(occurred_at) < $1
           ORDER BY waiting_since LIMIT $2""",
        cutoff,
        limit,
    )
    assert summary is not None
    return summary, rows


async def unsettled_delivery(
    conn: Conn, cutoff: datetime, limit: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    summary = await conn.fetchrow(
        """SELECT count(*)::int AS batches, count(DISTINCT campaign_id)::int AS campaigns,
                  coalesce(sum(accepted - delivered - delivery_failed), 0)::bigint AS messages
           FROM batches WHERE accepted > delivered + delivery_failed AND finished_at < $1""",
        cutoff,
    )
    rows = await conn.fetch(
        """SELECT b.campaign_id::text AS campaign_id, c.tenant_id::text AS tenant_id,
                  sum(b.accepted - b.delivered - b.delivery_failed)::bigint AS messages, min(b.finished_at) AS oldest
           FROM batches b JOIN campaigns c ON c.id = b.campaign_id
           WHERE b.accepted > b.delivered + b.delivery_failed AND b.finished_at < $1
           GROUP BY 1, 2 ORDER BY oldest LIMIT $2""",
        cutoff,
        limit,
    )
    assert summary is not None
    return summary, rows


async def ambiguous_batches(conn: Conn, limit: int) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    summary = await conn.fetchrow(
        """SELECT count(*)::int AS batches, coalesce(sum(ambiguous), 0)::bigint AS recipients
           FROM batches WHERE status = 'ambiguous' AND ambiguous > 0"""
    )
    rows = await conn.fetch(
        """SELECT b.batch_id, b.campaign_id::text AS campaign_id, c.tenant_id::text AS tenant_id,
                  b.ambiguous AS recipients, b.error AS reason, b.finished_at
           FROM batches b JOIN campaigns c ON c.id = b.campaign_id
           WHERE b.status = 'ambiguous' AND b.ambiguous > 0 ORDER BY b.finished_at LIMIT $1""",
        limit,
    )
    assert summary is not None
    return summary, rows


async def stuck_runs(conn: Conn, cutoff: datetime, limit: int) -> list[asyncpg.Record]:
    """Campaigns sending whose run has not moved since the cutoff (no claim or outcome of its batches)."""
    return await conn.fetch(
        """SELECT c.id::text AS campaign_id, c.tenant_id::text AS tenant_id, c.run_token, c.batch_count,
                  count(b.batch_id)::int AS batches_seen,
                  count(*) FILTER (WHERE b.status IN ('queued', 'processing'))::int AS open_batches,
                  count(*) FILTER (WHERE b.status = 'ambiguous')::int AS ambiguous_batches,
                  greatest(max(b.claimed_at), max(b.finished_at), c.started_at) AS last_activity
           FROM campaigns c LEFT JOIN batches b ON b.campaign_id = c.id AND b.run_token = c.run_token
           WHERE c.status = 'sending'
           GROUP BY c.id
           HAVING coalesce(greatest(max(b.claimed_at), max(b.finished_at), c.started_at), c.updated_at) < $1
           ORDER BY last_activity NULLS FIRST LIMIT $2""",
        cutoff,
        limit,
    )
