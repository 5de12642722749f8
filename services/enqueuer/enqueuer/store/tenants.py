"""SQL of tenants, API keys, subscriptions and the credit ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import Conn


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    channel: str
    default_region: str
    sender_id: str | None
    subscription_status: str


@dataclass(frozen=True)
class Credits:
    available: int
    reserved: int
    spent: int


_TENANT = "id::text AS id, name, channel, default_region, sender_id, subscription_status"


async def insert_tenant(conn: Conn, t: Tenant, created_at: datetime) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, sender_id, subscription_status, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        t.id,
        t.name,
        t.channel,
        t.default_region,
        t.sender_id,
        t.subscription_status,
        created_at,
    )


async def load_tenant(conn: Conn, tenant_id: str, *, lock: bool = False) -> Tenant | None:
    row = await conn.fetchrow(
        f"SELECT {_TENANT} FROM tenants WHERE id = $1" + (" FOR UPDATE" if lock else ""), tenant_id
    )
    return Tenant(**dict(row)) if row else None


async def insert_api_key(
    conn: Conn, key_id: str, tenant_id: str, key_hash: str, created_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES ($1, $2, $3, $4)",
        key_id,
        tenant_id,
        key_hash,
        created_at,
    )


async def tenant_for_key(conn: Conn, key_hash: str) -> Tenant | None:
    row = await conn.fetchrow(
        """SELECT t.id::text AS id, t.name, t.channel, t.default_region, t.sender_id, t.subscription_status
           FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL""",
        key_hash,
    )
    return Tenant(**dict(row)) if row else None


async def list_api_keys(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, created_at, revoked_at FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id""",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def revoke_api_key(conn: Conn, tenant_id: str, key_id: str, at: datetime) -> bool:
    """True when the key was live and is now revoked."""
    done = await conn.fetchval(
        """UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL
           RETURNING true""",
        tenant_id,
        key_id,
        at,
    )
    return bool(done)


async def set_subscription(conn: Conn, tenant_id: str, status: str) -> str | None:
    """The previous status (None: no such tenant)."""
    previous: str | None = await conn.fetchval(
        """UPDATE tenants t SET subscription_status = $2 FROM (SELECT subscription_status FROM tenants
               WHERE id = $1 FOR UPDATE) AS before
           WHERE t.id = $1 RETURNING before.subscription_status""",
        tenant_id,
        status,
    )
    return previous


# --- credits -----------------------------------------------------------------------------------------


async def load_credits(conn: Conn, tenant_id: str, *, lock: bool = False) -> Credits:
    row = await conn.fetchrow(
        "SELECT credits_available, credits_reserved, credits_spent FROM tenants WHERE id = $1"
        + (" FOR UPDATE" if lock else ""),
        tenant_id,
    )
    assert row is not None, f"tenant {tenant_id} is missing"
    return Credits(row[0], row[1], row[2])


async def top_up(conn: Conn, tenant_id: str, credits: int, reference: str | None, at: datetime) -> Credits:
    row = await conn.fetchrow(
        """UPDATE tenants SET credits_available = credits_available + $2 WHERE id = $1
           RETURNING credits_available, credits_reserved, credits_spent""",
        tenant_id,
        credits,
    )
    assert row is not None
    await _ledger(conn, tenant_id, "top_up", credits, None, reference, at)
    return Credits(row[0], row[1], row[2])


async def reserve(conn: Conn, tenant_id: str, credits: int, run_token: str, at: datetime) -> bool:
    """Move credits from available to reserved; False (and nothing changed) when not enough are available."""
    if credits == 0:
        return True
    done = await conn.fetchval(
        """UPDATE tenants SET credits_available = credits_available - $2, credits_reserved = credits_reserved + $2
           WHERE id = $1 AND credits_available >= $2 RETURNING true""",
        tenant_id,
        credits,
    )
    if done:
        await _ledger(conn, tenant_id, "reserve", credits, run_token, None, at)
    return bool(done)


async def debit(conn: Conn, tenant_id: str, credits: int, run_token: str, at: datetime) -> None:
    """Spend reserved credits (accepted message parts)."""
    if credits:
        await conn.execute(
            """UPDATE tenants SET credits_reserved = credits_reserved - $2, credits_spent = credits_spent + $2
               WHERE id = $1""",
            tenant_id,
            credits,
        )
        await _ledger(conn, tenant_id, "debit", credits, run_token, None, at)


async def release(conn: Conn, tenant_id: str, credits: int, run_token: str, at: datetime) -> None:
    """Give reserved credits back to the available balance."""
    if credits:
        await conn.execute(
            """UPDATE tenants SET credits_reserved = credits_reserved - $2, credits_available = credits_available + $2
               WHERE id = $1""",
            tenant_id,
            credits,
        )
        await _ledger(conn, tenant_id, "release", credits, run_token, None, at)


async def _ledger(
    conn: Conn,
    tenant_id: str,
    kind: str,
    credits: int,
    run_token: str | None,
    reference: str | None,
    at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO credit_ledger (tenant_id, kind, credits, run_token, reference, at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id,
        kind,
        credits,
        run_token,
        reference,
        at,
    )


async def ledger_entries(
    conn: Conn, tenant_id: str, limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, kind, credits, run_token, reference, at FROM credit_ledger
           WHERE tenant_id = $1 AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $2""",
        tenant_id,
        limit,
        before_id,
    )
    return [dict(r) for r in rows]
