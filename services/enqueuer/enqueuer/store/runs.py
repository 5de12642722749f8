"""Every SQL statement of the enqueuer (asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from enqueuer.domain import Run
from shared.db import Conn


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    channel: str
    default_region: str
    sender_id: str | None
    subscription_status: str


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


async def insert_tenant(conn: Conn, t: Tenant, created_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, sender_id, subscription_status, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        t.id,
        t.name,
        t.channel,
        t.default_region,
        t.sender_id,
        t.subscription_status,
        created_at,
    )


async def insert_api_key(
    conn: Conn, key_id: str, tenant_id: str, key_hash: str, created_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES ($1, $2, $3, $4)",
        key_id,
        tenant_id,
        key_hash,
        created_at,
    )


async def tenant_for_key(conn: Conn, key_hash: str) -> Tenant | None:
    row = await conn.fetchrow(
        """SELECT t.id::text AS id, t.name, t.channel, t.default_region, t.sender_id, t.subscription_status
           FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL""",
        key_hash,
    )
    return Tenant(**dict(row)) if row else None


async def insert_campaign(conn: Conn, c: Campaign, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, name, text, sender_id, message_type, status, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)""",
        c.id,
        c.tenant_id,
        c.name,
        c.text,
        c.sender_id,
        c.message_type,
        c.status,
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


_CAMPAIGN_COLUMNS = """id::text AS id, tenant_id::text AS tenant_id, name, text, sender_id, message_type,
                       status, run_token"""


async def lock_campaign(conn: Conn, tenant_id: str, campaign_id: str) -> Campaign | None:
    """Row-lock the tenant's campaign without waiting: a concurrent command holding it raises
    `asyncpg.LockNotAvailableError`, which the caller answers with 409."""
    row = await conn.fetchrow(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1 AND tenant_id = $2 FOR UPDATE NOWAIT",
        campaign_id,
        tenant_id,
    )
    return Campaign(**dict(row)) if row else None


async def materialise_from_audience(conn: Conn, campaign_id: str) -> int:
    """Create recipients once per (campaign, phone); returns how many were new."""
    status = await conn.execute(
        """INSERT INTO recipients (campaign_id, phone, "values")
           SELECT campaign_id, phone, "values" FROM campaign_audience WHERE campaign_id = $1
           ORDER BY phone
           ON CONFLICT (campaign_id, phone) DO NOTHING""",
        campaign_id,
    )
    return int(status.split()[-1])


async def count_recipients(conn: Conn, campaign_id: str, state: str | None = None) -> int:
    if state is None:
        return int(await conn.fetchval("SELECT count(*) FROM recipients WHERE campaign_id = $1", campaign_id))
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM recipients WHERE campaign_id = $1 AND state = $2", campaign_id, state
        )
    )


async def stream_recipients(
    conn: Conn, campaign_id: str, state: str, chunk: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """Recipients in `state`, in id order, `chunk` rows at a time (a server-side cursor: the audience
    is never held in memory). Must run inside a transaction."""
    cursor = await conn.cursor(
        """SELECT id, phone, "values" FROM recipients WHERE campaign_id = $1 AND state = $2 ORDER BY id""",
        campaign_id,
        state,
    )
    while rows := await cursor.fetch(chunk):
        yield rows


async def start_run(conn: Conn, run: Run, kind: str, batch_size: int, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO runs (run_token, campaign_id, kind, total, batch_count, batch_size, started_at,
                             last_progress)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $7)""",
        run.token,
        run.campaign_id,
        kind,
        run.total,
        run.batch_count,
        batch_size,
        at,
    )


async def insert_run_batches(conn: Conn, run_token: str, batches: Sequence[tuple[str, int, int]]) -> None:
    await conn.execute(
        """INSERT INTO run_batches (batch_id, run_token, batch_no, size)
           SELECT b, $1, n, s FROM unnest($2::text[], $3::int[], $4::int[]) AS u(b, n, s)""",
        run_token,
        [b[0] for b in batches],
        [b[1] for b in batches],
        [b[2] for b in batches],
    )


async def mark_campaign_sending(conn: Conn, campaign_id: str, run_token: str, at: datetime) -> None:
    await conn.execute(
        """UPDATE campaigns SET status = 'sending', run_token = $2, started_at = coalesce(started_at, $3),
                                finished_at = NULL, updated_at = $3
           WHERE id = $1""",
        campaign_id,
        run_token,
        at,
    )


async def finish_campaign(conn: Conn, campaign_id: str, run_token: str, status: str, at: datetime) -> None:
    """Only the campaign's current run may finish it."""
    await conn.execute(
        """UPDATE campaigns SET status = $3, finished_at = $4, updated_at = $4
           WHERE id = $1 AND run_token = $2 AND status = 'sending'""",
        campaign_id,
        run_token,
        status,
        at,
    )


# --- idempotency keys --------------------------------------------------------------------------------


async def stored_response(conn: Conn, tenant_id: str, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
        tenant_id,
        key,
    )


async def store_response(
    conn: Conn,
    tenant_id: str,
    key: str,
    request_hash: str,
    status_code: int,
    response: dict[str, Any],
    at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, response, created_at)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        tenant_id,
        key,
        request_hash,
        status_code,
        response,
        at,
    )


# --- outcomes ----------------------------------------------------------------------------------------


async def settle_run_batch(
    conn: Conn, batch_id: str, status: str, accepted: int, failed: int, at: datetime
) -> str | None:
    """Record the batch's first outcome; None when it already had one (a duplicate event).

    A batch whose claim was seen may still settle; a settled batch never changes again here."""
    run_token: str | None = await conn.fetchval(
        """UPDATE run_batches SET status = $2, accepted = $3, failed = $4, settled_at = $5
           WHERE batch_id = $1 AND status IN ('queued', 'claimed')
           RETURNING run_token""",
        batch_id,
        status,
        accepted,
        failed,
        at,
    )
    return run_token
    return run_token


async def mark_batch_claimed(conn: Conn, batch_id: str) -> None:
    await conn.execute(
        "UPDATE run_batches SET status = 'claimed' WHERE batch_id = $1 AND status = 'queued'", batch_id
    )


async def load_run(conn: Conn, run_token: str) -> Run | None:
    row = await conn.fetchrow(
        """SELECT run_token AS token, campaign_id::text AS campaign_id, total, batch_count, settled, accepted,
                  failed, ambiguous, deferred, status
           FROM runs WHERE run_token = $1 FOR UPDATE""",
        run_token,
    )
    return Run(**dict(row)) if row else None


async def save_run(conn: Conn, run: Run, at: datetime, finished: bool) -> None:
    await conn.execute(
        """UPDATE runs SET settled = $2, accepted = $3, failed = $4, ambiguous = $5, deferred = $6,
                           status = $7, last_progress = $8::timestamptz,
                           finished_at = CASE WHEN $9::boolean THEN $8::timestamptz END
           WHERE run_token = $1""",
        run.token,
        run.settled,
        run.accepted,
        run.failed,
        run.ambiguous,
        run.deferred,
        run.status,
        at,
        finished,
    )


async def set_recipient_state(conn: Conn, campaign_id: str, ids: Sequence[int], state: str) -> None:
    if ids:
        await conn.execute(
            "UPDATE recipients SET state = $3 WHERE campaign_id = $1 AND id = ANY($2::bigint[])",
            campaign_id,
            list(ids),
            state,
        )


async def campaign_accepted(conn: Conn, campaign_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(accepted), 0) FROM runs WHERE campaign_id = $1 AND status <> 'sending'",
            campaign_id,
        )
    )
