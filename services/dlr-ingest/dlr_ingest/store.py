"""Every SQL statement of dlr-ingest: the link catalogue fed from the log, and unsubscribes.

Writes are set-based (one statement per table per consumed batch) and idempotent: a replayed event writes
the same row again or nothing.
"""

from __future__ import annotations

from datetime import datetime

from dlr_ingest.domain import Catalogue, LinkTarget
from shared.db import Conn


async def save_catalogue(conn: Conn, c: Catalogue) -> None:
    if c.tenants:
        rows = list(c.tenants.values())
        await conn.execute(
            """INSERT INTO tenants (id, name) SELECT * FROM unnest($1::text[], $2::text[])
               ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name""",
            [r.id for r in rows],
            [r.name for r in rows],
        )
    if c.campaigns:
        rows_c = list(c.campaigns.values())
        await conn.execute(
            """INSERT INTO campaigns (id, tenant_id, name, offer_url)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
               ON CONFLICT (id) DO UPDATE SET tenant_id = COALESCE(EXCLUDED.tenant_id, campaigns.tenant_id),
                   name = EXCLUDED.name, offer_url = EXCLUDED.offer_url""",
            [r.id for r in rows_c],
            [r.tenant_id for r in rows_c],
            [r.name for r in rows_c],
            [r.offer_url for r in rows_c],
        )
    if c.batch_offers:
        rows_b = list(c.batch_offers.values())
        await conn.execute(
            """INSERT INTO campaigns (id, tenant_id, offer_url)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
               ON CONFLICT (id) DO UPDATE SET tenant_id = COALESCE(campaigns.tenant_id, EXCLUDED.tenant_id),
                   offer_url = COALESCE(campaigns.offer_url, EXCLUDED.offer_url)""",
            [r.id for r in rows_b],
            [r.tenant_id for r in rows_b],
            [r.offer_url for r in rows_b],
        )
    if c.recipients:
        rows_r = list(c.recipients.values())
        await conn.execute(
            """INSERT INTO recipients (id, campaign_id, tenant_id, phone)
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
               ON CONFLICT (id) DO NOTHING""",
            [r.id for r in rows_r],
            [r.campaign_id for r in rows_r],
            [r.tenant_id for r in rows_r],
            [r.phone for r in rows_r],
        )


async def load_link_target(conn: Conn, recipient_id: int) -> LinkTarget | None:
    row = await conn.fetchrow(
        """SELECT r.id, r.campaign_id, COALESCE(r.tenant_id, c.tenant_id) AS tenant_id, r.phone,
                  c.offer_url, t.name AS shop_name
           FROM recipients r
           LEFT JOIN campaigns c ON c.id = r.campaign_id
           LEFT JOIN tenants t ON t.id = COALESCE(r.tenant_id, c.tenant_id)
           WHERE r.id = $1""",
        recipient_id,
    )
    if row is None:
        return None
    return LinkTarget(
        recipient_id=row["id"],
        campaign_id=row["campaign_id"],
        tenant_id=row["tenant_id"],
        phone=row["phone"],
        offer_url=row["offer_url"],
        shop_name=row["shop_name"],
    )


async def add_unsubscribe(conn: Conn, recipient_id: int, at: datetime) -> bool:
    """True the first time this recipient unsubscribes; False on every later visit."""
    return (
        await conn.fetchval(
            """INSERT INTO unsubscribes (recipient_id, unsubscribed_at) VALUES ($1, $2)
               ON CONFLICT DO NOTHING RETURNING true""",
            recipient_id,
            at,
        )
        is not None
    )
