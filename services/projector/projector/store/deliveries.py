"""SQL of the projection for delivery reports: one statement per poll inserts the reports of messages that
had none (attributing each to its recipient), another replaces the few merged with a stored report."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from projector.domain import DeliveryState
from projector.store.writes import DeliveryRow, json_rows
from shared.db import Conn

_REPORTS = """
    SELECT r->>0 AS message_id, r->>1 AS status, r->>2 AS raw_status, r->>3 AS error,
           (r->>4)::timestamptz AS provider_time, (r->>5)::timestamptz AS reported_at
    FROM jsonb_array_elements($1::text::jsonb) AS j(r)"""


async def insert_first_reports(
    conn: Conn, rows: Sequence[DeliveryRow]
) -> tuple[list[asyncpg.Record], list[str]]:
    """Insert reports of messages with no stored report, in one statement; a report whose message has no
    send result yet is also listed in `parked_reports`.

    Returns the inserted ones that belong to a known recipient, grouped by (campaign, batch, status, raw
    status) with a count, and the message ids that already had a stored report (to be merged with it)."""
    result = await conn.fetch(
        f"""WITH i AS ({_REPORTS}
           ), owned AS (
               SELECT i.*, r.campaign_id, r.batch_id
               FROM i LEFT JOIN LATERAL (SELECT campaign_id, batch_id FROM recipients r
                                         WHERE r.message_id = i.message_id LIMIT 1) r ON true
           ), ins AS (
               INSERT INTO deliveries (message_id, status, raw_status, error, provider_time, reported_at)
               SELECT message_id, status, raw_status, error, provider_time, reported_at
               FROM owned
               ON CONFLICT (message_id) DO NOTHING
               RETURNING message_id
           ), parked AS (
               INSERT INTO parked_reports (message_id)
               SELECT o.message_id FROM owned o JOIN ins USING (message_id) WHERE o.campaign_id IS NULL
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
