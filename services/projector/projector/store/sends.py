"""SQL of the projection for batches and send results: per batch event, or one statement per poll for the
recipients (a poll's send results travel as one JSONB parameter, grouped by their outcome event)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from projector.store.writes import SendRow, json_rows
from shared.db import Conn


@dataclass(frozen=True)
class QueuedBatch:
    batch_id: str
    campaign_id: str
    run_token: str
    batch_no: int
    ids: list[int]
    phones: list[str]


async def batch_statuses(conn: Conn, batch_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT batch_id, status FROM batches WHERE batch_id = ANY($1::text[])", list(batch_ids)
    )
    return {r["batch_id"]: r["status"] for r in rows}


async def upsert_queued(conn: Conn, batches: Sequence[QueuedBatch]) -> None:
    """Members are kept only while the batch is open or deferred; an outcome seen first keeps it closed."""
    await conn.executemany(
        """INSERT INTO batches (batch_id, campaign_id, run_token, batch_no, size, status, member_ids,
                                member_phones, min_id, max_id)
           VALUES ($1, $2, $3, $4, cardinality($5::bigint[]), 'queued', $5, $6, $7, $8)
           ON CONFLICT (batch_id) DO UPDATE SET batch_no = EXCLUDED.batch_no, size = EXCLUDED.size,
               min_id = EXCLUDED.min_id, max_id = EXCLUDED.max_id,
               member_ids = CASE WHEN batches.status IN ('queued', 'processing', 'deferred')
                                 THEN EXCLUDED.member_ids END,
               member_phones = CASE WHEN batches.status IN ('queued', 'processing', 'deferred')
                                    THEN EXCLUDED.member_phones END""",
        [
            (
                b.batch_id,
                b.campaign_id,
                b.run_token,
                b.batch_no,
                b.ids,
                b.phones,
                min(b.ids, default=None),
                max(b.ids, default=None),
            )
            for b in batches
        ],
    )


async def fill_phones(conn: Conn, batches: Sequence[QueuedBatch]) -> None:
    """Phones of recipients whose batch failed or turned ambiguous before its BatchQueued was read."""
    await conn.executemany(
        """UPDATE recipients AS r SET phone = u.phone
           FROM unnest($2::bigint[], $3::text[]) AS u(id, phone)
           WHERE r.campaign_id = $1 AND r.id = u.id AND r.phone = ''""",
        [(b.campaign_id, b.ids, b.phones) for b in batches],
    )


# --- sms.outcomes ------------------------------------------------------------------------------------


async def run_kinds(conn: Conn, run_tokens: Sequence[str]) -> dict[str, str]:
    """The kind of each run whose CampaignEnqueued has been applied; runs not read yet are absent."""
    rows = await conn.fetch(
        "SELECT run_token, kind FROM runs WHERE run_token = ANY($1::text[])", list(run_tokens)
    )
    return {r["run_token"]: r["kind"] for r in rows}


# (run_token, topic, partition, offset, raw record value)
ParkedOutcome = tuple[str, str, int, int, bytes]


async def park_outcomes(conn: Conn, outcomes: Sequence[tuple[str, datetime, ParkedOutcome]]) -> None:
    """Park (campaign_id, occurred_at, outcome) triples."""
    await conn.executemany(
        """INSERT INTO parked_outcomes (campaign_id, occurred_at, run_token, topic, partition, "offset", raw)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
        [(cid, at, *o) for cid, at, o in outcomes],
    )


async def unpark_outcomes(conn: Conn, run_tokens: Sequence[str]) -> list[ParkedOutcome]:
    """Take the outcomes parked for `run_tokens`, in log order."""
    rows = await conn.fetch(
        """DELETE FROM parked_outcomes WHERE run_token = ANY($1::text[])
           RETURNING run_token, topic, partition, "offset", raw""",
        list(run_tokens),
    )
    parked = [(r["run_token"], r["topic"], r["partition"], r["offset"], r["raw"]) for r in rows]
    return sorted(parked, key=lambda p: (p[1], p[2], p[3]))


async def recorded_recipients(conn: Conn, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those (campaign_id, recipient_id) that have a send result (counted under it until replaced)."""
    rows = await conn.fetch(
        """SELECT r.campaign_id::text AS campaign_id, r.id
           FROM unnest($1::uuid[], $2::bigint[]) AS u(campaign_id, id)
           CROSS JOIN LATERAL (SELECT campaign_id, id FROM recipients
                               WHERE campaign_id = u.campaign_id AND id = u.id LIMIT 1) AS r""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["campaign_id"], r["id"]) for r in rows}


@dataclass(frozen=True)
class BatchState:
    status: str
    claimed: int
    member_ids: list[int] | None
    member_phones: list[str] | None


async def batch_states(conn: Conn, batch_ids: Sequence[str]) -> dict[str, BatchState]:
    rows = await conn.fetch(
        "SELECT batch_id, status, claimed, member_ids, member_phones FROM batches WHERE batch_id = ANY($1::text[])",
        list(batch_ids),
    )
    return {
        r["batch_id"]: BatchState(r["status"], r["claimed"], r["member_ids"], r["member_phones"])
        for r in rows
    }


@dataclass(frozen=True)
class Claim:
    batch_id: str
    campaign_id: str
    run_token: str
    size: int
    claimed: int  # of them counted as processing: those without a recorded send result
    at: datetime


async def claim_batches(conn: Conn, claims: Sequence[Claim]) -> None:
    """Claims the domain accepted (the batch was unknown or queued): it is processing now."""
    if not claims:
        return
    await conn.executemany(
        """INSERT INTO batches (batch_id, campaign_id, run_token, size, claimed, status, claimed_at)
           VALUES ($1, $2, $3, $4, $5, 'processing', $6)
           ON CONFLICT (batch_id) DO UPDATE SET status = 'processing', claimed = EXCLUDED.claimed,
               claimed_at = EXCLUDED.claimed_at""",
        [(c.batch_id, c.campaign_id, c.run_token, c.size, c.claimed, c.at) for c in claims],
    )


@dataclass(frozen=True)
class BatchOutcome:
    batch_id: str
    campaign_id: str
    run_token: str
    status: str  # sent | failed | ambiguous | deferred
    at: datetime
    bulk_id: str | None
    error: str | None
    retry_count: int


async def finish_batches(conn: Conn, outcomes: Sequence[BatchOutcome]) -> None:
    """First outcomes the domain accepted. A deferred batch keeps its members: they are queued again."""
    if not outcomes:
        return
    await conn.executemany(
        """INSERT INTO batches (batch_id, campaign_id, run_token, size, status, finished_at, bulk_id, error,
                                retry_count)
           VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)
           ON CONFLICT (batch_id) DO UPDATE SET status = EXCLUDED.status, finished_at = EXCLUDED.finished_at,
               bulk_id = EXCLUDED.bulk_id, error = EXCLUDED.error, retry_count = EXCLUDED.retry_count,
               member_ids = CASE WHEN EXCLUDED.status = 'deferred' THEN batches.member_ids END,
               member_phones = CASE WHEN EXCLUDED.status = 'deferred' THEN batches.member_phones END""",
        [
            (o.batch_id, o.campaign_id, o.run_token, o.status, o.at, o.bulk_id, o.error, o.retry_count)
            for o in outcomes
        ],
    )


@dataclass(frozen=True)
class Resolution:
    batch_id: str
    bulk_id: str | None
    remaining: int


async def resolve_batches(conn: Conn, resolutions: Sequence[Resolution]) -> None:
    """An ambiguous batch whose last recipients got their results is `resolved`; its bulk id is kept."""
    if not resolutions:
        return
    await conn.executemany(
        """UPDATE batches SET bulk_id = coalesce($2, bulk_id),
               status = CASE WHEN $3::int = 0 THEN 'resolved' ELSE status END
           WHERE batch_id = $1 AND status = 'ambiguous'""",
        [(r.batch_id, r.bulk_id, r.remaining) for r in resolutions],
    )


async def send_statuses(
    conn: Conn, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[str, str]]:
    """(campaign, recipient) → (recorded send status, its batch) for recipients that have a send result."""
    rows = await conn.fetch(
        """SELECT r.campaign_id::text AS campaign_id, r.id, r.status, r.batch_id
           FROM jsonb_array_elements($1::text::jsonb) AS j(k)
           CROSS JOIN LATERAL (SELECT * FROM recipients r
                               WHERE r.campaign_id = (k->>0)::uuid AND r.id = (k->>1)::bigint LIMIT 1) r""",
        json_rows(keys),
    )
    return {(r["campaign_id"], r["id"]): (r["status"], r["batch_id"]) for r in rows}


def send_json(rows: Sequence[SendRow]) -> str:
    """Send results grouped by what their outcome event shares (campaign, batch, bulk id, retry count,
    time), so that PostgreSQL parses those once per batch instead of once per recipient."""
    groups: dict[tuple[str, str, str | None, int, datetime], list[tuple[object, ...]]] = {}
    for r in rows:
        groups.setdefault((r[0], r[3], r[6], r[9], r[10]), []).append((r[1], r[2], r[4], r[5], r[7], r[8]))
    return orjson.dumps([(*head, members) for head, members in groups.items()]).decode()


_SEND_ROWS = """
    SELECT (g->>0)::uuid AS c, g->>1 AS b, g->>2 AS bulk, (g->>3)::int AS rc, (g->>4)::timestamptz AS at,
           (r->>0)::bigint AS id, r->>1 AS phone, r->>2 AS st, r->>3 AS mid, (r->>4)::int AS parts, r->>5 AS err
    FROM jsonb_array_elements($1::text::jsonb) AS groups(g), jsonb_array_elements(g->5) AS members(r)"""

# Reports parked for the messages just written: counted now, and no longer parked.
_UNPARK = """
    released AS (
        DELETE FROM parked_reports p USING written w
        WHERE p.message_id = w.message_id AND w.status = 'accepted'
        RETURNING w.campaign_id, w.batch_id, p.message_id
    ), unparked AS (
        SELECT r.campaign_id, r.batch_id, d.status, d.raw_status
        FROM released r JOIN deliveries d USING (message_id)
    )"""


async def insert_first_results(
    conn: Conn, rows: Sequence[SendRow]
) -> tuple[list[asyncpg.Record], set[tuple[str, int]]]:
    """Insert send results of recipients with none recorded, in one statement.

    Returns the parked reports of the inserted messages, grouped by (campaign, batch, status, raw status)
    with a count, and the (campaign, recipient) of those that already had a result (to be decided
    against it)."""
    result = await conn.fetch(
        f"""WITH u AS ({_SEND_ROWS}
           ), written AS (
               INSERT INTO recipients (campaign_id, id, phone, batch_id, status, message_id, bulk_id, parts,
                                       error, retry_count, sent_at, failed_at)
               SELECT c, id, phone, b, st, mid, bulk, parts, err, rc,
                      CASE WHEN st = 'accepted' THEN at END, CASE WHEN st = 'rejected' THEN at END
               FROM u
               ON CONFLICT (campaign_id, id) DO NOTHING
               RETURNING campaign_id, id, batch_id, status, message_id
           ), {_UNPARK}
           SELECT NULL::bigint AS conflict, campaign_id::text AS campaign_id, batch_id, status, raw_status,
                  count(*)::int AS n
           FROM unparked GROUP BY 2, 3, 4, 5
           UNION ALL
           SELECT u.id, u.c::text, NULL, NULL, NULL, 0
           FROM u WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.campaign_id = u.c AND w.id = u.id)""",
        send_json(rows),
    )
    conflicts = {(r["campaign_id"], r["conflict"]) for r in result if r["conflict"] is not None}
    return [r for r in result if r["conflict"] is None], conflicts


async def write_send_results(conn: Conn, rows: Sequence[SendRow]) -> list[asyncpg.Record]:
    """Replace recipients' recorded send results (the domain decided each may); returns their parked
    reports, grouped as `insert_first_results` does."""
    return await conn.fetch(
        f"""WITH u AS ({_SEND_ROWS}
           ), written AS (
               INSERT INTO recipients (campaign_id, id, phone, batch_id, status, message_id, bulk_id, parts,
                                       error, retry_count, sent_at, failed_at)
               SELECT c, id, phone, b, st, mid, bulk, parts, err, rc,
                      CASE WHEN st = 'accepted' THEN at END, CASE WHEN st = 'rejected' THEN at END
               FROM u
               ON CONFLICT (campaign_id, id) DO UPDATE SET phone = EXCLUDED.phone, batch_id = EXCLUDED.batch_id,
                   status = EXCLUDED.status, message_id = EXCLUDED.message_id, bulk_id = EXCLUDED.bulk_id,
                   parts = EXCLUDED.parts, error = EXCLUDED.error, retry_count = EXCLUDED.retry_count,
                   sent_at = EXCLUDED.sent_at, failed_at = EXCLUDED.failed_at
               RETURNING campaign_id, id, batch_id, status, message_id
           ), {_UNPARK}
           SELECT campaign_id::text AS campaign_id, batch_id, status, raw_status, count(*)::int AS n
           FROM unparked GROUP BY 1, 2, 3, 4""",
        send_json(rows),
    )
