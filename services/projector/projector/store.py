"""Read queries of the projector's API (asyncpg)."""

from __future__ import annotations

import asyncpg

from shared.db import Conn


async def tenant_for_key(conn: Conn, key_hash: str) -> str | None:
    value = await conn.fetchval(
        "SELECT tenant_id::text FROM api_keys WHERE key_hash = $1 AND NOT revoked", key_hash
    )
    return str(value) if value else None


async def campaign(conn: Conn, tenant_id: str | None, campaign_id: str) -> asyncpg.Record | None:
    """The campaign row, only when it belongs to `tenant_id` (None: operator, any tenant)."""
    return await conn.fetchrow(
        "SELECT * FROM campaigns WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2::uuid)",
        campaign_id,
        tenant_id,
    )


async def delivery_breakdown(conn: Conn, campaign_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT raw_status, count FROM delivery_breakdown WHERE campaign_id = $1 AND count <> 0 ORDER BY raw_status",
        campaign_id,
    )
    return {r["raw_status"]: r["count"] for r in rows}
