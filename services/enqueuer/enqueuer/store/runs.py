"""SQL of recipients, runs, their batches, the outbox rows the planner writes itself, idempotency keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from enqueuer.domain import PlannedBatch, Run
from shared.db import OUTBOX_CHANNEL, Conn

# --- recipients --------------------------------------------------------------------------------------


async def has_recipients(conn: Conn, campaign_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM recipients WHERE campaign_id = $1)", campaign_id)
    )


async def materialise_inline(conn: Conn, campaign_id: str, tenant_id: str, *, fresh: bool) -> int:
    """Create recipients from the inline audience once per (campaign, phone), leaving out opted-out phones;
    returns how many were created. `fresh` as in `contacts.materialise_from_contacts`."""
    status = await conn.execute(
        f"""INSERT INTO recipients (campaign_id, phone, values_json)
           SELECT a.campaign_id, a.phone, a."values"::text FROM campaign_audience a
           WHERE a.campaign_id = $1 AND NOT EXISTS (
               SELECT 1 FROM contacts c WHERE c.tenant_id = $2 AND c.phone = a.phone AND c.opted_out_at IS NOT NULL)
           ORDER BY a.phone
           {"" if fresh else "ON CONFLICT (campaign_id, phone) DO NOTHING"}""",
        campaign_id,
        tenant_id,
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


_VALUES = """coalesce(values_json, "values"::text)"""  # rows from before 0004 keep their values as jsonb


@dataclass(frozen=True)
class Chunk:
    """Up to a batch of recipients, as parallel arrays (cheaper to receive than one record per row)."""

    ids: list[int]
    phones: list[str]
    values: list[str]  # JSON objects as text
    last_phone: str


@dataclass(frozen=True)
class PlannedRows:
    """What the planner wrote for the recipients it received before: outbox values (in publication order)
    and (batch id, number, size, cost, recipient ids as an array literal) per batch."""

    topic: str
    key: bytes
    values: list[bytes]
    batches: list[tuple[str, int, int, int, str]]


async def plan_step(
    conn: Conn,
    campaign_id: str,
    state: str,
    after_phone: str,
    limit: int,
    run_token: str,
    written: PlannedRows,
) -> Chunk | None:
    """One round trip of planning: write the outbox rows and batch rows planned from the previous chunk, and
    read the next `limit` recipients in `state` after `after_phone` (phone order, through the (campaign,
    phone) unique index: a keyset walk never re-reads). None when there are no more recipients.
    Call inside `index_order_walk`: the planner's statistics do not know rows inserted by this transaction."""
    b = written.batches
    row = await conn.fetchrow(
        f"""WITH outbox_rows AS (
               INSERT INTO outbox (topic, key, value)
               SELECT $5, $6, u.v FROM unnest($7::bytea[]) WITH ORDINALITY AS u(v, o) ORDER BY u.o
           ), batch_rows AS (
               INSERT INTO run_batches (batch_id, run_token, batch_no, size, cost, recipient_ids)
               SELECT u.b, $8, u.n, u.s, u.c, u.i::bigint[]
               FROM unnest($9::text[], $10::int[], $11::int[], $12::int[], $13::text[]) AS u(b, n, s, c, i)
           )
           SELECT array_agg(r.id) AS ids, array_agg(r.phone) AS phones, array_agg(r.v) AS vals,
                  max(r.phone) AS last_phone
           FROM (SELECT id, phone, {_VALUES} AS v FROM recipients
                 WHERE campaign_id = $1 AND state = $2 AND phone > $3 ORDER BY phone LIMIT $4) AS r""",
        campaign_id,
        state,
        after_phone,
        limit,
        written.topic,
        written.key,
        written.values,
        run_token,
        [x[0] for x in b],
        [x[1] for x in b],
        [x[2] for x in b],
        [x[3] for x in b],
        [x[4] for x in b],
    )
    if row is None or row["ids"] is None:
        return None
    return Chunk(row["ids"], row["phones"], row["vals"], row["last_phone"])


@asynccontextmanager
async def index_order_walk(conn: Conn) -> AsyncIterator[None]:
    """Within the caller's transaction, plan queries without sorts: right after a million rows were inserted
    in this transaction the statistics still describe the table before them, and the planner then prefers a
    bitmap scan and a top-N sort of the whole campaign (300 ms) over the ordered index walk (5 ms) for every
    `plan_step`."""
    previous = await conn.fetchval("SELECT current_setting('enable_sort')")
    await conn.execute("SELECT set_config('enable_sort', 'off', true)")
    try:
        yield
    finally:
        await conn.execute("SELECT set_config('enable_sort', $1, true)", previous)


async def recipients_by_id(conn: Conn, ids: Sequence[int]) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT id, phone, {_VALUES} FROM recipients WHERE id = ANY($1::bigint[]) ORDER BY id""",
        list(ids),
    )


async def requeue_failed(conn: Conn, campaign_id: str) -> int:
    status = await conn.execute(
        "UPDATE recipients SET state = 'queued' WHERE campaign_id = $1 AND state = 'failed'", campaign_id
    )
    return int(status.split()[-1])


async def fail_unsent_retries(conn: Conn, campaign_id: str) -> None:
    """On cancel: recipients a retry requeued and nobody sent again are failed again, as their last send
    was. A retry starts only once every recipient has settled, so once a campaign had one, whatever is still
    queued was requeued by it (a run's never-attempted recipients stay queued: they never failed)."""
    await conn.execute(
        """UPDATE recipients SET state = 'failed'
           WHERE campaign_id = $1 AND state = 'queued'
             AND EXISTS (SELECT 1 FROM runs WHERE campaign_id = $1 AND kind = 'retry_failed')""",
        campaign_id,
    )


async def set_recipient_state(conn: Conn, campaign_id: str, ids: Sequence[int], state: str) -> None:
    if ids:
        await conn.execute(
            "UPDATE recipients SET state = $3 WHERE campaign_id = $1 AND id = ANY($2::bigint[])",
            campaign_id,
            list(ids),
            state,
        )


async def ambiguous_recipients(conn: Conn, campaign_id: str, ids: Sequence[int]) -> set[int]:
    """Which of `ids` are still ambiguous, locked until the end of the transaction."""
    rows = await conn.fetch(
        "SELECT id FROM recipients WHERE campaign_id = $1 AND id = ANY($2::bigint[]) AND state = 'ambiguous' "
        "FOR UPDATE",
        campaign_id,
        list(ids),
    )
    return {r["id"] for r in rows}


async def recipient_counts(conn: Conn, campaign_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT state, count(*) AS n FROM recipients WHERE campaign_id = $1 GROUP BY state", campaign_id
    )
    return {r["state"]: r["n"] for r in rows}


# --- the outbox, written directly by the planner (pre-encoded batches) --------------------------------


async def add_outbox_raw(conn: Conn, rows: Sequence[tuple[str, bytes, bytes]]) -> list[int]:
    """Insert (topic, key, value) rows; returns their ids (their publication order)."""
    ids = await conn.fetch(
        """INSERT INTO outbox (topic, key, value)
           SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) RETURNING id""",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )
    await conn.execute("SELECT pg_notify($1, current_schema())", OUTBOX_CHANNEL)
    return [r["id"] for r in ids]


async def notify_outbox(conn: Conn) -> None:
    """Wake the relay when the transaction commits (rows written by `plan_step` do not notify)."""
    await conn.execute("SELECT pg_notify($1, current_schema())", OUTBOX_CHANNEL)


async def rewrite_outbox(conn: Conn, outbox_id: int, value: bytes) -> None:
    """Fill in a row reserved earlier in the same (uncommitted) transaction: the relay cannot see it yet."""
    await conn.execute("UPDATE outbox SET value = $2 WHERE id = $1", outbox_id, value)


# --- runs and batches --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    run: Run
    tenant_id: str
    kind: str
    batch_size: int
    template: str
    sender_id: str | None
    message_type: str
    offer_url: str | None
    reservation_expires_at: datetime


async def start_run(conn: Conn, plan: RunPlan, at: datetime) -> None:
    r = plan.run
    await conn.execute(
        """INSERT INTO runs (run_token, campaign_id, kind, total, batch_count, batch_size, started_at,
                             last_progress, tenant_id, template, sender_id, message_type, offer_url,
                             credits_reserved, reservation_open, reservation_expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, true, $14)""",
        r.token,
        r.campaign_id,
        plan.kind,
        r.total,
        r.batch_count,
        plan.batch_size,
        at,
        plan.tenant_id,
        plan.template,
        plan.sender_id,
        plan.message_type,
        plan.offer_url,
        r.credits_reserved,
        plan.reservation_expires_at,
    )


async def finish_run_plan(conn: Conn, run_token: str, total: int, batch_count: int, credits: int) -> None:
    """Fill in what is known once every batch of a run has been planned (its row exists from the start, so
    that its batches can be written as they are planned)."""
    await conn.execute(
        "UPDATE runs SET total = $2, batch_count = $3, credits_reserved = $4 WHERE run_token = $1",
        run_token,
        total,
        batch_count,
        credits,
    )


_RUN = """run_token AS token, campaign_id::text AS campaign_id, total, batch_count, settled, accepted, failed,
          ambiguous, deferred, status, credits_reserved, credits_debited, credits_released, reservation_open"""


async def load_run(conn: Conn, run_token: str, *, lock: bool = True) -> Run | None:
    row = await conn.fetchrow(
        f"SELECT {_RUN} FROM runs WHERE run_token = $1" + (" FOR UPDATE" if lock else ""), run_token
    )
    return Run(**dict(row)) if row else None


async def run_tenant(conn: Conn, run_token: str) -> str:
    return str(await conn.fetchval("SELECT tenant_id::text FROM runs WHERE run_token = $1", run_token))


async def save_run(conn: Conn, run: Run, at: datetime, finished: bool) -> None:
    await conn.execute(
        """UPDATE runs SET settled = $2, accepted = $3, failed = $4, ambiguous = $5, deferred = $6,
                           status = $7, last_progress = greatest(last_progress, $8::timestamptz),
                           finished_at = CASE WHEN $9::boolean THEN $8::timestamptz ELSE finished_at END,
                           credits_reserved = $10, credits_debited = $11, credits_released = $12,
                           reservation_open = $13
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
        run.credits_reserved,
        run.credits_debited,
        run.credits_released,
        run.reservation_open,
    )


async def set_run_status(conn: Conn, run_token: str, status: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE runs SET status = $2, last_progress = $3 WHERE run_token = $1 AND status IN ('sending', 'paused')",
        run_token,
        status,
        at,
    )


async def load_batch(conn: Conn, batch_id: str) -> tuple[str, PlannedBatch] | None:
    """(run token, batch) locked for this transaction."""
    row = await conn.fetchrow(
        "SELECT run_token, status, cost, ambiguous FROM run_batches WHERE batch_id = $1 FOR UPDATE", batch_id
    )
    if row is None:
        return None
    return row["run_token"], PlannedBatch(row["status"], row["cost"], row["ambiguous"])


async def settle_batch(
    conn: Conn,
    batch_id: str,
    status: str,
    accepted: int,
    failed: int,
    ambiguous: int,
    debited: int,
    at: datetime,
) -> None:
    await conn.execute(
        """UPDATE run_batches SET status = $2, accepted = accepted + $3, failed = failed + $4, ambiguous = $5,
                                  debited = debited + $6, settled_at = $7
           WHERE batch_id = $1""",
        batch_id,
        status,
        accepted,
        failed,
        ambiguous,
        debited,
        at,
    )


async def mark_batch_claimed(conn: Conn, batch_id: str, at: datetime) -> None:
    run_token = await conn.fetchval(
        "UPDATE run_batches SET status = 'claimed' WHERE batch_id = $1 AND status = 'queued' RETURNING run_token",
        batch_id,
    )
    if run_token is not None:
        await conn.execute(
            "UPDATE runs SET last_progress = greatest(last_progress, $2) WHERE run_token = $1", run_token, at
        )


async def campaign_accepted(conn: Conn, campaign_id: str) -> int:
    """Recipients accepted by the campaign's finished (or stopped) runs."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(accepted), 0) FROM runs WHERE campaign_id = $1 AND status <> 'sending'",
            campaign_id,
        )
    )


async def campaign_runs(conn: Conn, campaign_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT run_token, kind, status, total, batch_count, settled, accepted, failed, ambiguous, deferred,
                  credits_reserved, credits_debited, credits_released, reservation_open, started_at,
                  finished_at, republished
           FROM runs WHERE campaign_id = $1 ORDER BY started_at, run_token""",
        campaign_id,
    )
    return [dict(r) for r in rows]


# --- stuck runs and expiring reservations ------------------------------------------------------------


@dataclass(frozen=True)
class StuckRun:
    token: str
    campaign_id: str
    tenant_id: str
    template: str
    sender_id: str | None
    message_type: str
    offer_url: str | None


async def claim_stuck_run(conn: Conn, quiet_since: datetime) -> StuckRun | None:
    """A run with batches never claimed and no progress since `quiet_since`, locked (others skipped)."""
    row = await conn.fetchrow(
        """SELECT run_token AS token, campaign_id::text AS campaign_id, tenant_id::text AS tenant_id, template,
                  sender_id, message_type, offer_url
           FROM runs r
           WHERE settled < batch_count AND last_progress < $1 AND template IS NOT NULL
             AND EXISTS (SELECT 1 FROM run_batches b WHERE b.run_token = r.run_token AND b.status = 'queued')
           ORDER BY last_progress LIMIT 1 FOR UPDATE SKIP LOCKED""",
        quiet_since,
    )
    return StuckRun(**dict(row)) if row else None


async def unclaimed_batches(conn: Conn, run_token: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT batch_id, batch_no, recipient_ids FROM run_batches
           WHERE run_token = $1 AND status = 'queued' ORDER BY batch_no""",
        run_token,
    )


async def note_republished(conn: Conn, run_token: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE runs SET republished = republished + 1, last_progress = $2 WHERE run_token = $1",
        run_token,
        at,
    )


async def claim_expired_reservation(conn: Conn, now: datetime) -> tuple[Run, str] | None:
    row = await conn.fetchrow(
        f"""SELECT {_RUN}, tenant_id::text AS tenant_id FROM runs
            WHERE reservation_open AND reservation_expires_at <= $1
            ORDER BY reservation_expires_at LIMIT 1 FOR UPDATE SKIP LOCKED""",
        now,
    )
    if row is None:
        return None
    values = dict(row)
    tenant_id = values.pop("tenant_id")
    return Run(**values), tenant_id


# --- idempotency keys --------------------------------------------------------------------------------


async def lock_idempotency_key(conn: Conn, tenant_id: str, key: str) -> None:
    """Serialise requests carrying the same key: the second waits for the first's answer, then replays it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{tenant_id}:{key}")


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
