"""SQL of the projection shared by every kind of event: the writer's lock, positions, once-only facts,
engagement and the counters. The other kinds are in `facts`, `sends` and `deliveries`. Names are
unqualified: the connection's search_path picks the live schema or a rebuild's.

Lookups of a poll's keys in the big tables are LATERAL subqueries with `LIMIT 1` (the keys are unique): the
limit keeps the planner from flattening them into a join, which it would run by hashing the whole table,
and pins one index probe per key."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg
import orjson

from projector.domain import BatchDelta, CampaignDelta
from shared.db import Conn


def json_rows(rows: Sequence[Sequence[object]]) -> str:
    """A poll's rows as one JSON array of arrays, sent as one text parameter and taken apart by
    `jsonb_array_elements`: parsed once, in C. An array parameter per column costs about twice as much,
    most of it encoding every element on our side."""
    return orjson.dumps(rows).decode()


# (campaign_id, id, phone, batch_id, status, message_id, bulk_id, parts, error, retry_count, at, resolution)
SendRow = tuple[str, int, str, str, str, str | None, str | None, int, str | None, int, datetime, bool]
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
