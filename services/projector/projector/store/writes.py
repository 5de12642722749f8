"""SQL of the projection: one statement per consumed batch and event kind (arrays in, `unnest` inside),
or one per event for the rare per-campaign and per-batch facts. Names are unqualified: the connection's
search_path picks the live schema or a rebuild's.

Lookups of a poll's keys in the big tables are LATERAL subqueries with `LIMIT 1` (the keys are unique): the
limit keeps the planner from flattening them into a join, which it would run by hashing the whole table,
and pins one index probe per key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from projector.domain import BatchDelta, CampaignDelta, DeliveryState
from shared.db import Conn


def json_rows(rows: Sequence[Sequence[object]]) -> str:
    """A poll's rows as one JSON array of arrays, sent as one text parameter and taken apart by
    `jsonb_array_elements`: parsed once, in C. An array parameter per column costs about twice as much,
    most of it encoding every element on our side."""
    return orjson.dumps(rows).decode()


# (campaign_id, id, phone, batch_id, status, message_id, bulk_id, parts, error, retry_count, at)
SendRow = tuple[str, int, str, str, str, str | None, str | None, int, str | None, int, datetime]
# (message_id, status, raw_status, error, provider_time, reported_at)
DeliveryRow = tuple[str, str, str, str | None, datetime | None, datetime]


async def lock_apply(conn: Conn) -> None:
    """One projection transaction at a time per schema, across replicas.

    A send result and a report of the same message may sit in different partitions held by different
    replicas; serialised, each transaction sees the other's rows and the report is counted exactly once.
    A rebuild's schema has its own lock, so it never waits on the live projection."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('projector.apply:' || current_schema(), 0))"
    )


async def lock_positions(
    conn: Conn, consumer: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The stored next offsets of `partitions` in the schema being written, locked (0 where none)."""
    keys = sorted(set(partitions))
    rows = await conn.fetch(
        """SELECT topic, partition, next_offset FROM consumer_position
           WHERE consumer = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))
           ORDER BY topic, partition FOR UPDATE""",
        consumer,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def claim_events(conn: Conn, event_ids: Sequence[str]) -> set[str]:
    """Record once-only events; returns the ids not applied before."""
    if not event_ids:
        return set()
    rows = await conn.fetch(
        "INSERT INTO applied_events (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
        list(event_ids),
    )
    return {r["event_id"] for r in rows}


# --- tenant.events -----------------------------------------------------------------------------------


async def upsert_tenant(
    conn: Conn, tenant_id: str, name: str, channel: str, region: str, sender_id: str | None
) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, sender_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, channel = EXCLUDED.channel,
               default_region = EXCLUDED.default_region, sender_id = EXCLUDED.sender_id""",
        tenant_id,
        name,
        channel,
        region,
        sender_id,
    )


async def issue_key(conn: Conn, key_hash: str, key_id: str, tenant_id: str) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_hash, key_id, tenant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        key_hash,
        key_id,
        tenant_id,
    )


async def revoke_key(conn: Conn, key_id: str) -> None:
    await conn.execute("UPDATE api_keys SET revoked = true WHERE key_id = $1", key_id)


async def set_subscription(conn: Conn, tenant_id: str, status: str) -> None:
    await conn.execute("UPDATE tenants SET subscription_status = $2 WHERE id = $1", tenant_id, status)


async def add_tenant_credits(conn: Conn, tenant_id: str, credits: int) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, credits_topped_up)
           VALUES ($1, '', 'retail', '', $2)
           ON CONFLICT (id) DO UPDATE SET credits_topped_up = tenants.credits_topped_up + EXCLUDED.credits_topped_up""",
        tenant_id,
        credits,
    )


# --- campaign.events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignFields:
    name: str
    text: str
    message_type: str
    sender_id: str | None
    offer_url: str | None
    at: datetime


async def create_campaign(
    conn: Conn, campaign_id: str, tenant_id: str | None, channel: str, f: CampaignFields
) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, name, message_text, message_type, channel, sender_id,
                                  offer_url, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, message_text = EXCLUDED.message_text,
               message_type = EXCLUDED.message_type, channel = EXCLUDED.channel,
               sender_id = EXCLUDED.sender_id, offer_url = EXCLUDED.offer_url,
               created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        f.name,
        f.text,
        f.message_type,
        channel,
        f.sender_id,
        f.offer_url,
        f.at,
    )


async def update_campaign(conn: Conn, campaign_id: str, f: CampaignFields) -> None:
    await conn.execute(
        """UPDATE campaigns SET name = $2, message_text = $3, message_type = $4, sender_id = $5,
               offer_url = $6, updated_at = $7
           WHERE id = $1""",
        campaign_id,
        f.name,
        f.text,
        f.message_type,
        f.sender_id,
        f.offer_url,
        f.at,
    )


@dataclass(frozen=True)
class StatusChange:
    status: str
    at: datetime
    run_token: str | None = None
    run_kind: str | None = None
    run_total: int | None = None
    batch_count: int | None = None
    total: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    scheduled_at: datetime | None = None


async def set_campaign_status(conn: Conn, campaign_id: str, tenant_id: str | None, s: StatusChange) -> None:
    """A status event of campaign.events. A new run clears the finish time and the last refusal."""
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, status, run_token, run_kind, run_total, batch_count, total,
                                  started_at, finished_at, scheduled_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, coalesce($6, 0), coalesce($7, 0), coalesce($8, 0), $9, $10, $11, $12)
           ON CONFLICT (id) DO UPDATE SET
               status = EXCLUDED.status,
               run_token = coalesce(EXCLUDED.run_token, campaigns.run_token),
               run_kind = coalesce(EXCLUDED.run_kind, campaigns.run_kind),
               run_total = CASE WHEN $6::int IS NULL THEN campaigns.run_total ELSE EXCLUDED.run_total END,
               batch_count = CASE WHEN $7::int IS NULL THEN campaigns.batch_count ELSE EXCLUDED.batch_count END,
               total = greatest(campaigns.total, EXCLUDED.total),
               started_at = coalesce(campaigns.started_at, EXCLUDED.started_at),
               finished_at = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                  ELSE coalesce(EXCLUDED.finished_at, campaigns.finished_at) END,
               scheduled_at = coalesce(EXCLUDED.scheduled_at, campaigns.scheduled_at),
               last_enqueue_error_code = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                              ELSE campaigns.last_enqueue_error_code END,
               last_enqueue_error_message = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                                 ELSE campaigns.last_enqueue_error_message END,
               last_enqueue_error_at = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                            ELSE campaigns.last_enqueue_error_at END,
               updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        s.status,
        s.run_token,
        s.run_kind,
        s.run_total,
        s.batch_count,
        s.total,
        s.started_at,
        s.finished_at,
        s.scheduled_at,
        s.at,
    )


async def set_enqueue_error(
    conn: Conn, campaign_id: str, tenant_id: str | None, code: str, message: str, at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, last_enqueue_error_code, last_enqueue_error_message,
                                  last_enqueue_error_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $5)
           ON CONFLICT (id) DO UPDATE SET last_enqueue_error_code = EXCLUDED.last_enqueue_error_code,
               last_enqueue_error_message = EXCLUDED.last_enqueue_error_message,
               last_enqueue_error_at = EXCLUDED.last_enqueue_error_at, updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        code,
        message,
        at,
    )


CREDIT_COLUMNS = frozenset({"credits_reserved", "credits_debited", "credits_released"})


async def add_campaign_credits(
    conn: Conn, campaign_id: str, tenant_id: str | None, column: str, credits: int
) -> None:
    if column not in CREDIT_COLUMNS:
        raise ValueError(f"not a credit column: {column}")
    await conn.execute(
        f"""INSERT INTO campaigns (id, tenant_id, {column}) VALUES ($1, $2, $3)
            ON CONFLICT (id) DO UPDATE SET {column} = campaigns.{column} + EXCLUDED.{column}""",
        campaign_id,
        tenant_id,
        credits,
    )


# --- sms.batches -------------------------------------------------------------------------------------


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
    claimed: int
    at: datetime


async def claim_batches(conn: Conn, claims: Sequence[Claim]) -> None:
    """Claims the domain accepted (the batch was unknown or queued): it is processing now."""
    if not claims:
        return
    await conn.executemany(
        """INSERT INTO batches (batch_id, campaign_id, run_token, size, claimed, status, claimed_at)
           VALUES ($1, $2, $3, $4, $4, 'processing', $5)
           ON CONFLICT (batch_id) DO UPDATE SET status = 'processing', claimed = EXCLUDED.claimed,
               claimed_at = EXCLUDED.claimed_at""",
        [(c.batch_id, c.campaign_id, c.run_token, c.claimed, c.at) for c in claims],
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
    unparked AS (
        UPDATE deliveries d SET parked = false FROM written w
        WHERE d.parked AND d.message_id = w.message_id AND w.status = 'accepted'
        RETURNING w.campaign_id, w.batch_id, d.status, d.raw_status
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


# --- delivery.reports --------------------------------------------------------------------------------


_REPORTS = """
    SELECT r->>0 AS message_id, r->>1 AS status, r->>2 AS raw_status, r->>3 AS error,
           (r->>4)::timestamptz AS provider_time, (r->>5)::timestamptz AS reported_at
    FROM jsonb_array_elements($1::text::jsonb) AS j(r)"""


async def insert_first_reports(
    conn: Conn, rows: Sequence[DeliveryRow]
) -> tuple[list[asyncpg.Record], list[str]]:
    """Insert reports of messages with no stored report, in one statement; a report whose message has no
    send result yet is stored `parked`.

    Returns the inserted ones that belong to a known recipient, grouped by (campaign, batch, status, raw
    status) with a count, and the message ids that already had a stored report (to be merged with it)."""
    result = await conn.fetch(
        f"""WITH i AS ({_REPORTS}
           ), owned AS (
               SELECT i.*, r.campaign_id, r.batch_id
               FROM i LEFT JOIN LATERAL (SELECT campaign_id, batch_id FROM recipients r
                                         WHERE r.message_id = i.message_id LIMIT 1) r ON true
           ), ins AS (
               INSERT INTO deliveries (message_id, status, raw_status, error, provider_time, reported_at, parked)
               SELECT message_id, status, raw_status, error, provider_time, reported_at, campaign_id IS NULL
               FROM owned
               ON CONFLICT (message_id) DO NOTHING
               RETURNING message_id
           )
           SELECT NULL::text AS conflict, o.campaign_id::text AS campaign_id, o.batch_id, o.status,
                  o.raw_status, count(*)::int AS n
           FROM owned o JOIN ins USING (message_id)
           WHERE o.campaign_id IS NOT NULL
           GROUP BY 2, 3, 4, 5
           UNION ALL
           SELECT o.message_id, NULL, NULL, NULL, NULL, 0
           FROM owned o WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.message_id = o.message_id)""",
        json_rows(rows),
    )
    conflicts = [r["conflict"] for r in result if r["conflict"] is not None]
    return [r for r in result if r["conflict"] is None], conflicts


async def stored_reports(conn: Conn, message_ids: Sequence[str]) -> dict[str, DeliveryState]:
    rows = await conn.fetch(
        """SELECT message_id, status, raw_status, error, provider_time, reported_at FROM deliveries
           WHERE message_id = ANY($1::text[])""",
        list(message_ids),
    )
    return {
        r["message_id"]: DeliveryState(
            r["status"], r["raw_status"], r["error"], r["provider_time"], r["reported_at"]
        )
        for r in rows
    }


async def replace_reports(conn: Conn, rows: Sequence[DeliveryRow]) -> dict[str, tuple[str, str]]:
    """Store merged reports; returns message id → (campaign, batch) for those with a known recipient."""
    result = await conn.fetch(
        f"""WITH i AS ({_REPORTS}
           ), up AS (
               UPDATE deliveries d SET status = i.status, raw_status = i.raw_status, error = i.error,
                   provider_time = i.provider_time, reported_at = i.reported_at
               FROM i WHERE d.message_id = i.message_id
           )
           SELECT r.message_id, r.campaign_id::text AS campaign_id, r.batch_id
           FROM i CROSS JOIN LATERAL (SELECT * FROM recipients r WHERE r.message_id = i.message_id LIMIT 1) r""",
        json_rows(rows),
    )
    return {r["message_id"]: (r["campaign_id"], r["batch_id"]) for r in result}


# --- engagement.events -------------------------------------------------------------------------------

# (campaign_id, recipient_id, kind, count, first_at, last_at)
EngagementRow = tuple[str, int, str, int, datetime, datetime]


async def add_engagements(conn: Conn, rows: Sequence[EngagementRow]) -> list[asyncpg.Record]:
    """Returns (campaign_id, recipient_id, kind, first) per row; `first` when this recipient had none."""
    cols = [list(c) for c in zip(*rows, strict=True)]
    return await conn.fetch(
        """INSERT INTO engagements AS e (campaign_id, recipient_id, kind, count, first_at, last_at)
           SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::int[], $5::timestamptz[],
                                $6::timestamptz[])
           ON CONFLICT (campaign_id, recipient_id, kind) DO UPDATE SET count = e.count + EXCLUDED.count,
               first_at = least(e.first_at, EXCLUDED.first_at), last_at = greatest(e.last_at, EXCLUDED.last_at)
           RETURNING campaign_id::text AS campaign_id, recipient_id, kind, (xmax = 0) AS first""",
        *cols,
    )


# --- counters ----------------------------------------------------------------------------------------


async def tenants_of(conn: Conn, campaign_ids: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT id::text AS id, tenant_id::text AS tenant_id FROM campaigns WHERE id = ANY($1::uuid[])",
        list(campaign_ids),
    )
    return {r["id"]: r["tenant_id"] for r in rows}


async def save_campaign_deltas(conn: Conn, items: Sequence[tuple[str, str | None, CampaignDelta]]) -> None:
    """Move campaign counters by this poll's transitions, and the delivery-status breakdown with them."""
    columns = list(zip(*[d.counters() for _, _, d in items], strict=True))
    await conn.execute(
        """INSERT INTO campaigns AS c (id, tenant_id, accepted, rejected, ambiguous, delivered, delivery_failed,
                                       processing, clicks, clicked, unsubscribed)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::int[], $6::int[], $7::int[],
                                $8::int[], $9::int[], $10::int[], $11::int[])
           ON CONFLICT (id) DO UPDATE SET accepted = c.accepted + EXCLUDED.accepted,
               rejected = c.rejected + EXCLUDED.rejected, ambiguous = c.ambiguous + EXCLUDED.ambiguous,
               delivered = c.delivered + EXCLUDED.delivered,
               delivery_failed = c.delivery_failed + EXCLUDED.delivery_failed,
               processing = c.processing + EXCLUDED.processing, clicks = c.clicks + EXCLUDED.clicks,
               clicked = c.clicked + EXCLUDED.clicked, unsubscribed = c.unsubscribed + EXCLUDED.unsubscribed""",
        [cid for cid, _, _ in items],
        [tid for _, tid, _ in items],
        *[list(c) for c in columns],
    )
    breakdown = [(cid, raw, n) for cid, _, d in items for raw, n in d.breakdown.items() if n]
    if breakdown:
        await conn.execute(
            """INSERT INTO delivery_breakdown AS b (campaign_id, raw_status, count)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])
               ON CONFLICT (campaign_id, raw_status) DO UPDATE SET count = b.count + EXCLUDED.count""",
            [b[0] for b in breakdown],
            [b[1] for b in breakdown],
            [b[2] for b in breakdown],
        )
        # A status every message has moved on from leaves no zero row behind: whether such a row exists
        # would otherwise depend on the interleaving (a report merged before or after its send result).
        gone = [b for b in breakdown if b[2] < 0]
        if gone:
            await conn.execute(
                """DELETE FROM delivery_breakdown b USING unnest($1::uuid[], $2::text[]) AS u(c, raw)
                   WHERE b.campaign_id = u.c AND b.raw_status = u.raw AND b.count = 0""",
                [b[0] for b in gone],
                [b[1] for b in gone],
            )


async def save_batch_deltas(conn: Conn, items: Sequence[tuple[str, BatchDelta]]) -> None:
    await conn.execute(
        """UPDATE batches AS b SET accepted = b.accepted + u.a, rejected = b.rejected + u.r,
               ambiguous = b.ambiguous + u.am, delivered = b.delivered + u.d,
               delivery_failed = b.delivery_failed + u.f
           FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::int[]) AS u(id, a, r, am, d, f)
           WHERE b.batch_id = u.id""",
        [b for b, _ in items],
        [d.accepted for _, d in items],
        [d.rejected for _, d in items],
        [d.ambiguous for _, d in items],
        [d.delivered for _, d in items],
        [d.delivery_failed for _, d in items],
    )
