"""Every SQL statement of the sender (asyncpg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sender.domain import Control
from shared.db import Conn
from shared.events import BatchRecipient


@dataclass(frozen=True)
class ExistingBatch:
    status: str
    outcome: bytes | None


async def claim_batch(
    conn: Conn, batch_id: str, campaign_id: str, run_token: str, size: int, at: datetime
) -> ExistingBatch | None:
    """Claim the batch before any provider call. None when this call claimed it; else what is recorded."""
    claimed = await conn.fetchval(
        """INSERT INTO send_batches (batch_id, campaign_id, run_token, status, size, claimed_at)
           VALUES ($1, $2, $3, 'claimed', $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
        batch_id,
        campaign_id,
        run_token,
        size,
        at,
    )
    if claimed:
        return None
    row = await conn.fetchrow(
        "SELECT status, outcome FROM send_batches WHERE batch_id = $1 FOR UPDATE", batch_id
    )
    assert row is not None
    return ExistingBatch(row["status"], row["outcome"])


async def load_control(conn: Conn, campaign_id: str) -> Control | None:
    row = await conn.fetchrow(
        "SELECT status, run_token FROM campaign_control WHERE campaign_id = $1", campaign_id
    )
    return Control(row["status"], row["run_token"]) if row else None


async def save_control(conn: Conn, campaign_id: str, status: str, run_token: str | None) -> None:
    await conn.execute(
        """INSERT INTO campaign_control (campaign_id, status, run_token) VALUES ($1, $2, $3)
           ON CONFLICT (campaign_id) DO UPDATE SET status = EXCLUDED.status,
               run_token = coalesce(EXCLUDED.run_token, campaign_control.run_token)""",
        campaign_id,
        status,
        run_token,
    )


async def claim_recipients(
    conn: Conn, campaign_id: str, batch_id: str, recipients: Sequence[BatchRecipient]
) -> dict[str, str]:
    """Claim each phone for this batch. Returns the phones already handed over by another batch
    (phone -> that batch); a phone the provider rejected earlier is claimed again."""
    rows = await conn.fetch(
        """WITH wanted AS (SELECT * FROM unnest($3::text[], $4::bigint[]) AS u(phone, rid)),
                claimed AS (
                    INSERT INTO sent_recipients AS s (campaign_id, phone, recipient_id, batch_id, status)
                    SELECT $1, phone, rid, $2, 'claimed' FROM wanted
                    ON CONFLICT (campaign_id, phone) DO UPDATE
                        SET batch_id = EXCLUDED.batch_id, recipient_id = EXCLUDED.recipient_id, status = 'claimed',
                            message_id = NULL
                        WHERE s.status = 'rejected'
                    RETURNING phone)
           SELECT s.phone, s.batch_id FROM sent_recipients s JOIN wanted w USING (phone)
           WHERE s.campaign_id = $1 AND w.phone NOT IN (SELECT phone FROM claimed)""",
        campaign_id,
        batch_id,
        [r.phone for r in recipients],
        [r.id for r in recipients],
    )
    return {r["phone"]: r["batch_id"] for r in rows}


async def record_recipients(
    conn: Conn,
    campaign_id: str,
    phones: Sequence[str],
    statuses: Sequence[str],
    message_ids: Sequence[str | None],
) -> None:
    await conn.execute(
        """UPDATE sent_recipients AS s SET status = u.st, message_id = u.mid
           FROM unnest($2::text[], $3::text[], $4::text[]) AS u(phone, st, mid)
           WHERE s.campaign_id = $1 AND s.phone = u.phone""",
        campaign_id,
        list(phones),
        list(statuses),
        list(message_ids),
    )


async def finish_batch(
    conn: Conn,
    batch_id: str,
    status: str,
    outcome: bytes,
    *,
    bulk_id: str | None,
    retry_count: int,
    error: str | None,
    at: datetime,
) -> None:
    await conn.execute(
        """UPDATE send_batches SET status = $2, outcome = $3, bulk_id = $4, retry_count = $5, error = $6,
                                  finished_at = $7
           WHERE batch_id = $1""",
        batch_id,
        status,
        outcome,
        bulk_id,
        retry_count,
        error,
        at,
    )


async def stored_positions(conn: Conn, consumer: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_position WHERE consumer = $1", consumer
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
