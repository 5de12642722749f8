"""Tenant use cases: registration, API keys, subscription, credit top-ups. Each change writes its event to
the outbox in the same transaction."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from enqueuer.domain import Refused
from enqueuer.messages import hash_key, tenant_event
from enqueuer.store import tenants as store
from shared import db
from shared.events import (
    ApiKeyIssued,
    ApiKeyRevoked,
    Channel,
    CreditsToppedUp,
    SubscriptionChanged,
    TenantRegistered,
)


@dataclass(frozen=True)
class NewTenant:
    tenant: store.Tenant
    api_key: str
    key_id: str
    credits: store.Credits


@dataclass(frozen=True)
class NewKey:
    key_id: str
    api_key: str


def _new_key() -> tuple[str, str]:
    return f"key_{secrets.token_hex(8)}", f"sk_{secrets.token_urlsafe(32)}"


async def register_tenant(
    pool: asyncpg.Pool,
    *,
    name: str,
    channel: Channel,
    default_region: str,
    sender_id: str | None,
    subscription_status: str,
    credits: int,
    at: datetime,
) -> NewTenant:
    tenant = store.Tenant(
        str(uuid.uuid4()), name, channel.value, default_region, sender_id, subscription_status
    )
    key_id, api_key = _new_key()
    events = [
        TenantRegistered(name=name, channel=channel, default_region=default_region, sender_id=sender_id),
        ApiKeyIssued(key_id=key_id, key_hash=hash_key(api_key)),
    ]
    if subscription_status != "active":
        events.append(SubscriptionChanged(status="inactive"))
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_tenant(conn, tenant, at)
        await store.insert_api_key(conn, key_id, tenant.id, hash_key(api_key), at)
        balance = store.Credits(0, 0, 0)
        if credits:
            balance = await store.top_up(conn, tenant.id, credits, "initial grant", at)
            events.append(CreditsToppedUp(credits=credits, reference="initial grant"))
        await db.add_outbox(conn, [tenant_event(e, tenant.id, at) for e in events])
    return NewTenant(tenant, api_key, key_id, balance)


async def issue_key(pool: asyncpg.Pool, tenant_id: str, at: datetime) -> NewKey:
    key_id, api_key = _new_key()
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_api_key(conn, key_id, tenant_id, hash_key(api_key), at)
        await db.add_outbox(
            conn, [tenant_event(ApiKeyIssued(key_id=key_id, key_hash=hash_key(api_key)), tenant_id, at)]
        )
    return NewKey(key_id, api_key)


async def revoke_key(pool: asyncpg.Pool, tenant_id: str, key_id: str, at: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        if not await store.revoke_api_key(conn, tenant_id, key_id, at):
            raise Refused(404, "RESOURCE_NOT_FOUND", "No live API key with that id.")
        await db.add_outbox(conn, [tenant_event(ApiKeyRevoked(key_id=key_id), tenant_id, at)])


async def set_subscription(pool: asyncpg.Pool, tenant_id: str, status: str, at: datetime) -> bool:
    """True when the status changed (an event is written); False when it already was `status`."""
    async with pool.acquire() as conn, conn.transaction():
        previous = await store.set_subscription(conn, tenant_id, status)
        if previous is None:
            raise Refused(404, "RESOURCE_NOT_FOUND", "No such tenant.")
        if previous == status:
            return False
        event = SubscriptionChanged(status="active" if status == "active" else "inactive")
        await db.add_outbox(conn, [tenant_event(event, tenant_id, at)])
        return True


async def top_up(
    pool: asyncpg.Pool, tenant_id: str, credits: int, reference: str | None, at: datetime
) -> store.Credits:
    async with pool.acquire() as conn, conn.transaction():
        if await store.load_tenant(conn, tenant_id, lock=True) is None:
            raise Refused(404, "RESOURCE_NOT_FOUND", "No such tenant.")
        balance = await store.top_up(conn, tenant_id, credits, reference, at)
        await db.add_outbox(
            conn, [tenant_event(CreditsToppedUp(credits=credits, reference=reference), tenant_id, at)]
        )
        return balance
