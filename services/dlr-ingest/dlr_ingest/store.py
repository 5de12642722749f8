"""Every SQL statement of dlr-ingest: the link catalogue fed from the log, and unsubscribes.

Writes are set-based (one statement per table per consumed batch; recipients one row per BatchQueued) and
idempotent: a replayed event writes the same row again or nothing.
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
    if c.batches:
        # One row per batch; a redelivered or republished batch (same deterministic id) writes nothing.
        await conn.executemany(
            """INSERT INTO link_batches (batch_id, campaign_id, tenant_id, min_id, max_id, ids, phones)
               VALUES ($1, $2, $3, $4, $5, $6::text::bigint[], $7::text::text[])
               ON CONFLICT (batch_id) DO NOTHING""",
            [
                (
                    b.batch_id,
                    b.campaign_id,
                    b.tenant_id,
                    b.min_id,
                    b.max_id,
                    _bigint_array(b.ids),
                    _text_array(b.phones),
                )
                for b in c.batches.values()
            ],
        )


# The arrays travel as PostgreSQL array literals built by joins: asyncpg's array encoder checks every element
# against collections.abc types, and the whole apply cost 3.7 instead of 2.6 µs per recipient with it.


def _bigint_array(ids: list[int]) -> str:
    return "{" + ",".join(map(str, ids)) + "}"


def _text_array(values: list[str]) -> str:
    """Every element quoted, so no content reads as a delimiter, NULL or brace. PostgreSQL text holds no NUL,
    so NUL joins the elements while backslashes and quotes are escaped (a value with a NUL, refused before
    too, splits in two and fails the row's check that ids and phones are as many)."""
    joined = "\x00".join(values)
    if "\\" in joined or '"' in joined:
        joined = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + joined.replace("\x00", '","') + '"}'


async def load_link_target(conn: Conn, recipient_id: int) -> LinkTarget | None:
    """The recipient a token names, or None when no batch named it.

    One GiST probe finds the batches whose id range holds the id; array_position confirms membership (ranges
    of batches enqueued at the same time overlap) and gives the phone's position. A recipient sent again by
    a later run is in several batches, all with the same campaign and phone: the first one found answers.
    Rows of `recipients` (written by versions before migration 0002) are read only when no batch holds the id."""
    row = await conn.fetchrow(
        """WITH found AS (
               (SELECT b.campaign_id, b.tenant_id, b.phones[p.i] AS phone
                FROM link_batches b CROSS JOIN LATERAL array_position(b.ids, $1::bigint) AS p(i)
                WHERE int8range(b.min_id, b.max_id, '[]') @> $1::bigint AND p.i IS NOT NULL
                LIMIT 1)
               UNION ALL
               (SELECT r.campaign_id, r.tenant_id, r.phone FROM recipients r WHERE r.id = $1)
               LIMIT 1
           )
           SELECT f.campaign_id, COALESCE(f.tenant_id, c.tenant_id) AS tenant_id, f.phone,
                  c.offer_url, t.name AS shop_name
           FROM found f
           LEFT JOIN campaigns c ON c.id = f.campaign_id
           LEFT JOIN tenants t ON t.id = COALESCE(f.tenant_id, c.tenant_id)""",
        recipient_id,
    )
    if row is None:
        return None
    return LinkTarget(
        recipient_id=recipient_id,
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
