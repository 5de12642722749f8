"""Every SQL statement of the sender (asyncpg): the send ledger, campaign control, the outbox rows it adds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sender.domain import Control
from shared.db import OUTBOX_CHANNEL, Conn
from shared.events import BatchRecipient


@dataclass(frozen=True)
class ExistingBatch:
    status: str
    outcome: bytes | None


@dataclass(frozen=True)
class Claim:
    """What the claim found: None in `existing` when this call claimed the batch; the campaign's control."""

    existing: ExistingBatch | None
    control: Control | None


async def claim_batch(
    conn: Conn,
    batch_id: str,
    campaign_id: str,
    run_token: str,
    tenant_id: str | None,
    size: int,
    at: datetime,
) -> Claim:
    """Claim the batch before any provider call, and read the campaign's control in the same round trip
    (each round trip waits for a busy event loop)."""
    row = await conn.fetchrow(
        """WITH claimed AS (
               INSERT INTO send_batches (batch_id, campaign_id, run_token, tenant_id, status, size, claimed_at)
               VALUES ($1, $2, $3, $4, 'claimed', $5, $6) ON CONFLICT DO NOTHING RETURNING true AS ok)
           SELECT (SELECT ok FROM claimed) AS claimed, c.status, c.run_token
           FROM (SELECT 1) AS one LEFT JOIN campaign_control c ON c.campaign_id = $2""",
        batch_id,
        campaign_id,
        run_token,
        tenant_id,
        size,
        at,
    )
    assert row is not None
    control = Control(row["status"], row["run_token"]) if row["status"] is not None else None
    if row["claimed"]:
        return Claim(None, control)
    found = await lock_batch(conn, batch_id)
    assert found is not None
    return Claim(found, control)


async def lock_batch(conn: Conn, batch_id: str) -> ExistingBatch | None:
    row = await conn.fetchrow(
        "SELECT status, outcome FROM send_batches WHERE batch_id = $1 FOR UPDATE", batch_id
    )
    return ExistingBatch(row["status"], row["outcome"]) if row else None


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
) -> dict[int, str]:
    """Claim each phone for this batch. Returns the recipients whose phone is held by another batch
    (recipient id -> that batch); a phone the provider rejected earlier is claimed again. A phone that
    appears twice in the batch is held by its first recipient; the others are duplicates of this batch.

    The usual batch has no phone in common with earlier ones: a plain INSERT (half the cost of
    ON CONFLICT's speculative insertion) in a savepoint; a unique violation falls back to the full rule.
    """
    phones = [r.phone for r in recipients]
    ids = [r.id for r in recipients]
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO sent_recipients (campaign_id, phone, recipient_id, batch_id, status)
                   SELECT $1, phone, rid, $2, 'claimed' FROM unnest($3::text[], $4::bigint[]) AS u(phone, rid)""",
                campaign_id,
                batch_id,
                phones,
                ids,
            )
        return {}
    except asyncpg.UniqueViolationError:
        pass
    rows = await conn.fetch(
        """WITH wanted AS (
                    SELECT DISTINCT ON (phone) phone, rid
                    FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS u(phone, rid, n) ORDER BY phone, n),
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
        phones,
        ids,
    )
    elsewhere = {r["phone"]: r["batch_id"] for r in rows}
    duplicates: dict[int, str] = {}
    seen: set[str] = set()
    for r in recipients:
        if r.phone in elsewhere:
            duplicates[r.id] = elsewhere[r.phone]
        elif r.phone in seen:
            duplicates[r.id] = batch_id
        seen.add(r.phone)
    return duplicates


async def held_by_batch(conn: Conn, campaign_id: str, batch_id: str, phones: Sequence[str]) -> set[str]:
    """Phones of `phones` this batch still holds without a final status of their own."""
    rows = await conn.fetch(
        """SELECT phone FROM sent_recipients
           WHERE campaign_id = $1 AND phone = ANY($3::text[]) AND batch_id = $2 AND status = 'claimed'""",
        campaign_id,
        batch_id,
        list(phones),
    )
    return {r["phone"] for r in rows}


async def mark_recipients(
    conn: Conn,
    campaign_id: str,
    batch_id: str,
    *,
    accepted: Sequence[tuple[str, str]] = (),
    rejected: Sequence[str] = (),
    abandoned: Sequence[str] = (),
) -> None:
    """Give recipients held by this batch their own final status (accepted ones with their message id)."""
    phones = [p for p, _ in accepted] + list(rejected) + list(abandoned)
    if not phones:
        return
    statuses = ["accepted"] * len(accepted) + ["rejected"] * len(rejected) + ["abandoned"] * len(abandoned)
    ids = [m for _, m in accepted] + [None] * (len(rejected) + len(abandoned))
    await conn.execute(
        """UPDATE sent_recipients AS s SET status = u.st, message_id = u.mid
           FROM unnest($3::text[], $4::text[], $5::text[]) AS u(phone, st, mid)
           WHERE s.campaign_id = $1 AND s.phone = u.phone AND s.batch_id = $2""",
        campaign_id,
        batch_id,
        phones,
        statuses,
        ids,
    )


async def finish_batch(
    conn: Conn,
    batch_id: str,
    status: str,
    outcome: bytes,
    *,
    bulk_id: str | None = None,
    retry_count: int = 0,
    error: str | None = None,
    remaining: int | None = None,
    batch_event: bytes | None = None,
    at: datetime,
) -> None:
    """Record the batch's first outcome (kept to be re-emitted as is when the batch arrives again)."""
    await conn.execute(
        """UPDATE send_batches SET status = $2, outcome = $3, bulk_id = $4, retry_count = $5, error = $6,
                                  remaining = $7, batch_event = $8, finished_at = $9
           WHERE batch_id = $1""",
        batch_id,
        status,
        outcome,
        bulk_id,
        retry_count,
        error,
        remaining,
        batch_event,
        at,
    )


async def add_known_ids(conn: Conn, batch_id: str, message_ids: Sequence[str]) -> None:
    if message_ids:
        await conn.execute(
            """INSERT INTO ambiguous_message_ids (batch_id, message_id)
               SELECT $1, m FROM unnest($2::text[]) AS u(m) ON CONFLICT DO NOTHING""",
            batch_id,
            list(message_ids),
        )


async def add_outbox(conn: Conn, topic: str, key: str, values: Sequence[bytes]) -> None:
    """Outbox rows from already encoded events (the relay publishes them after commit, in id order)."""
    if not values:
        return
    await conn.execute(
        """WITH added AS (INSERT INTO outbox (topic, key, value) SELECT $1, $2, v FROM unnest($3::bytea[]) AS u(v))
           SELECT pg_notify($4, current_schema())""",
        topic,
        key.encode(),
        list(values),
        OUTBOX_CHANNEL,
    )


# --- ambiguous batches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AmbiguousBatch:
    batch_id: str
    campaign_id: str
    tenant_id: str | None
    run_token: str
    status: str
    reason: str | None
    since: datetime | None
    remaining: int
    resolutions: int
    unlooked_ids: int


_AMBIGUOUS_COLUMNS = """b.batch_id, b.campaign_id::text AS campaign_id, b.tenant_id, b.run_token, b.status,
    b.error, b.finished_at, coalesce(b.remaining, b.size) AS remaining, b.resolutions,
    (SELECT count(*) FROM ambiguous_message_ids m WHERE m.batch_id = b.batch_id AND m.looked_up_at IS NULL) AS unlooked"""


def _ambiguous(row: asyncpg.Record) -> AmbiguousBatch:
    return AmbiguousBatch(
        row["batch_id"],
        row["campaign_id"],
        row["tenant_id"],
        row["run_token"],
        row["status"],
        row["error"],
        row["finished_at"],
        row["remaining"],
        row["resolutions"],
        row["unlooked"],
    )


async def ambiguous_batches(conn: Conn, limit: int, after: str | None = None) -> list[AmbiguousBatch]:
    rows = await conn.fetch(
        f"""SELECT {_AMBIGUOUS_COLUMNS} FROM send_batches b
            WHERE b.status = 'ambiguous' AND ($2::text IS NULL OR b.batch_id > $2)
            ORDER BY b.batch_id LIMIT $1""",
        limit,
        after,
    )
    return [_ambiguous(r) for r in rows]


async def count_ambiguous(conn: Conn) -> tuple[int, int]:
    """(batches, recipients) still ambiguous."""
    row = await conn.fetchrow(
        "SELECT count(*) AS b, coalesce(sum(remaining), 0) AS r FROM send_batches WHERE status = 'ambiguous'"
    )
    assert row is not None
    return int(row["b"]), int(row["r"])


async def load_ambiguous(
    conn: Conn, batch_id: str, *, lock: bool
) -> tuple[AmbiguousBatch, bytes | None] | None:
    """The batch (any status) and its stored BatchQueued record, locked for update when asked."""
    row = await conn.fetchrow(
        f"""SELECT {_AMBIGUOUS_COLUMNS}, b.batch_event FROM send_batches b WHERE b.batch_id = $1
            {"FOR UPDATE" if lock else ""}""",
        batch_id,
    )
    return (_ambiguous(row), row["batch_event"]) if row else None


async def set_batch_status(conn: Conn, batch_id: str, status: str, *, error: str | None = None) -> None:
    await conn.execute(
        "UPDATE send_batches SET status = $2, error = coalesce($3, error) WHERE batch_id = $1",
        batch_id,
        status,
        error,
    )


async def settle_resolution(conn: Conn, batch_id: str, remaining: int, retry_count: int, at: datetime) -> int:
    """Count one more resolution step; the batch is `resolved` when nobody is left. Returns the step number."""
    step = await conn.fetchval(
        """UPDATE send_batches SET remaining = $2, resolutions = resolutions + 1,
               retry_count = retry_count + $3,
               status = CASE WHEN $2 = 0 THEN 'resolved' ELSE 'ambiguous' END,
               batch_event = CASE WHEN $2 = 0 THEN NULL ELSE batch_event END,
               resolved_at = CASE WHEN $2 = 0 THEN $4 ELSE resolved_at END
           WHERE batch_id = $1 RETURNING resolutions""",
        batch_id,
        remaining,
        retry_count,
        at,
    )
    return int(step)


async def resends_in_flight(conn: Conn) -> list[str]:
    """Batches claimed again for an operator's resend (they had an outcome before)."""
    rows = await conn.fetch(
        "SELECT batch_id FROM send_batches WHERE status = 'claimed' AND outcome IS NOT NULL ORDER BY batch_id"
    )
    return [r["batch_id"] for r in rows]


async def batches_with_unlooked_ids(conn: Conn, limit: int) -> list[str]:
    rows = await conn.fetch(
        """SELECT DISTINCT m.batch_id FROM ambiguous_message_ids m JOIN send_batches b USING (batch_id)
           WHERE m.looked_up_at IS NULL AND b.status = 'ambiguous' ORDER BY m.batch_id LIMIT $1""",
        limit,
    )
    return [r["batch_id"] for r in rows]


async def unlooked_ids(conn: Conn, batch_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT message_id FROM ambiguous_message_ids WHERE batch_id = $1 AND looked_up_at IS NULL ORDER BY 1",
        batch_id,
    )
    return [r["message_id"] for r in rows]


async def mark_looked_up(conn: Conn, batch_id: str, message_ids: Sequence[str], at: datetime) -> None:
    await conn.execute(
        """UPDATE ambiguous_message_ids SET looked_up_at = $3
           WHERE batch_id = $1 AND message_id = ANY($2::text[])""",
        batch_id,
        list(message_ids),
        at,
    )


async def stored_positions(conn: Conn, consumer: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_position WHERE consumer = $1", consumer
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
