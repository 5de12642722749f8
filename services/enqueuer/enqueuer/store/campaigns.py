"""SQL of campaigns: the draft, its audience, its status, and the claims the scheduler makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import Conn


@dataclass(frozen=True)
class Campaign:
    id: str
    tenant_id: str
    name: str
    text: str
    sender_id: str | None
    message_type: str
    status: str
    run_token: str | None
    offer_url: str | None = None
    audience: dict[str, Any] | None = None
    scheduled_at: datetime | None = None
    resume_requested_at: datetime | None = None
    last_error: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


_COLUMNS = """id::text AS id, tenant_id::text AS tenant_id, name, text, sender_id, message_type, status,
              run_token, offer_url, audience, scheduled_at, resume_requested_at, last_error, created_at,
              updated_at, started_at, finished_at"""


async def insert_campaign(conn: Conn, c: Campaign, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, name, text, sender_id, message_type, status, offer_url,
                                  audience, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)""",
        c.id,
        c.tenant_id,
        c.name,
        c.text,
        c.sender_id,
        c.message_type,
        c.status,
        c.offer_url,
        c.audience,
        at,
    )


async def insert_audience(conn: Conn, campaign_id: str, rows: Sequence[tuple[str, dict[str, str]]]) -> None:
    await conn.execute(
        """INSERT INTO campaign_audience (campaign_id, phone, "values")
           SELECT $1, p, v FROM unnest($2::text[], $3::jsonb[]) AS u(p, v)
           ON CONFLICT DO NOTHING""",
        campaign_id,
        [r[0] for r in rows],
        [r[1] for r in rows],
    )


async def inline_audience_size(conn: Conn, campaign_id: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM campaign_audience WHERE campaign_id = $1", campaign_id)
    )


async def load_campaign(conn: Conn, tenant_id: str, campaign_id: str) -> Campaign | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2", campaign_id, tenant_id
    )
    return Campaign(**dict(row)) if row else None


async def lock_campaign(conn: Conn, tenant_id: str, campaign_id: str) -> Campaign | None:
    """Row-lock the tenant's campaign without waiting: a concurrent command holding it raises
    `asyncpg.LockNotAvailableError`, which the caller answers with 409."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2 FOR UPDATE NOWAIT",
        campaign_id,
        tenant_id,
    )
    return Campaign(**dict(row)) if row else None


async def list_campaigns(
    conn: Conn, tenant_id: str, status: str | None, limit: int, offset: int
) -> tuple[int, list[Campaign]]:
    total = await conn.fetchval(
        "SELECT count(*) FROM campaigns WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)",
        tenant_id,
        status,
    )
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM campaigns WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
            ORDER BY created_at DESC, id LIMIT $3 OFFSET $4""",
        tenant_id,
        status,
        limit,
        offset,
    )
    return int(total), [Campaign(**dict(r)) for r in rows]


async def update_draft(conn: Conn, c: Campaign, at: datetime) -> None:
    await conn.execute(
        """UPDATE campaigns SET name = $2, text = $3, sender_id = $4, message_type = $5, offer_url = $6,
                                audience = $7, updated_at = $8
           WHERE id = $1""",
        c.id,
        c.name,
        c.text,
        c.sender_id,
        c.message_type,
        c.offer_url,
        c.audience,
        at,
    )


async def replace_inline_audience(
    conn: Conn, campaign_id: str, rows: Sequence[tuple[str, dict[str, str]]]
) -> None:
    await conn.execute("DELETE FROM campaign_audience WHERE campaign_id = $1", campaign_id)
    await insert_audience(conn, campaign_id, rows)


async def schedule(conn: Conn, campaign_id: str, scheduled_at: datetime, at: datetime) -> None:
    await conn.execute(
        """UPDATE campaigns SET status = 'scheduled', scheduled_at = $2, schedule_refused_at = NULL,
                                last_error = NULL, updated_at = $3
           WHERE id = $1""",
        campaign_id,
        scheduled_at,
        at,
    )


async def set_status(
    conn: Conn, campaign_id: str, status: str, at: datetime, *, finished: bool = False
) -> None:
    await conn.execute(
        """UPDATE campaigns SET status = $2, updated_at = $3, resume_requested_at = NULL,
                                finished_at = CASE WHEN $4::boolean THEN $3 ELSE finished_at END
           WHERE id = $1""",
        campaign_id,
        status,
        at,
        finished,
    )


async def request_resume(conn: Conn, campaign_id: str, at: datetime) -> None:
    await conn.execute(
        """UPDATE campaigns SET resume_requested_at = coalesce(resume_requested_at, $2), last_error = NULL,
                                updated_at = $2
           WHERE id = $1""",
        campaign_id,
        at,
    )


async def mark_sending(conn: Conn, campaign_id: str, run_token: str, at: datetime) -> None:
    await conn.execute(
        """UPDATE campaigns SET status = 'sending', run_token = $2, started_at = coalesce(started_at, $3),
                                finished_at = NULL, resume_requested_at = NULL, last_error = NULL,
                                updated_at = $3
           WHERE id = $1""",
        campaign_id,
        run_token,
        at,
    )


async def finish(conn: Conn, campaign_id: str, run_token: str, status: str, at: datetime) -> None:
    """Only the campaign's current run may finish it, and only while it is sending."""
    await conn.execute(
        """UPDATE campaigns SET status = $3, finished_at = $4, updated_at = $4
           WHERE id = $1 AND run_token = $2 AND status = 'sending'""",
        campaign_id,
        run_token,
        status,
        at,
    )


async def record_refusal(
    conn: Conn, campaign_id: str, error: dict[str, Any], at: datetime, *, scheduled: bool
) -> None:
    """A scheduled send or a pending resume that could not start: keep the status, say why, stop trying."""
    await conn.execute(
        """UPDATE campaigns SET last_error = $2, resume_requested_at = NULL, updated_at = $3,
                                schedule_refused_at = CASE WHEN $4::boolean THEN $3 ELSE schedule_refused_at END
           WHERE id = $1""",
        campaign_id,
        error,
        at,
        scheduled,
    )


# --- the scheduler's claims: FOR UPDATE SKIP LOCKED, so two replicas never take the same campaign -------


async def claim_due(conn: Conn, now: datetime) -> Campaign | None:
    """One due scheduled campaign, row-locked for this transaction; others' locked rows are skipped."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM campaigns
            WHERE status = 'scheduled' AND scheduled_at <= $1 AND schedule_refused_at IS NULL
            ORDER BY scheduled_at, id LIMIT 1 FOR UPDATE SKIP LOCKED""",
        now,
    )
    return Campaign(**dict(row)) if row else None


async def claim_resumable(conn: Conn) -> Campaign | None:
    """One paused campaign with a pending resume whose paused run has every batch settled."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM campaigns c
            WHERE c.status = 'paused' AND c.resume_requested_at IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_token = c.run_token AND r.settled < r.batch_count)
            ORDER BY c.resume_requested_at, c.id LIMIT 1 FOR UPDATE OF c SKIP LOCKED"""
    )
    return Campaign(**dict(row)) if row else None
