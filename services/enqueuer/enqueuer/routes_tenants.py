"""Tenant routes: operator endpoints (register, top up, subscription, keys) and the tenant's own
(profile, credits and ledger, API keys)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from enqueuer import domain, tenancy
from enqueuer.api import SubscriptionIn, TenantIn, TopUpIn
from enqueuer.store import tenants as store
from enqueuer.web import Deps, check_sender, check_uuid
from shared.web import ApiError


def tenant_body(t: store.Tenant, credits: store.Credits | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": t.id,
        "name": t.name,
        "channel": t.channel,
        "defaultRegion": t.default_region,
        "senderId": t.sender_id,
        "subscriptionStatus": t.subscription_status,
    }
    if credits is not None:
        body["credits"] = credits_body(credits)
    return body


def credits_body(c: store.Credits) -> dict[str, int]:
    return {"available": c.available, "reserved": c.reserved, "spent": c.spent}


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    Tenant = Annotated[store.Tenant, Depends(deps.tenant)]
    operator = [Depends(deps.operator)]

    @r.post("/api/tenants", status_code=201, dependencies=operator)
    async def register_tenant(body: TenantIn) -> dict[str, Any]:
        check_sender(body.sender_id)
        try:
            region = domain.check_region(body.default_region)
        except ValueError as exc:
            raise ApiError(400, "INVALID_REGION", str(exc)) from None
        created = await tenancy.register_tenant(
            deps.pool,
            name=body.name,
            channel=body.channel,
            default_region=region,
            sender_id=body.sender_id,
            subscription_status=body.subscription_status,
            credits=body.credits,
            at=deps.clock(),
        )
        return {
            "tenant": tenant_body(created.tenant, created.credits),
            "apiKey": created.api_key,
            "keyId": created.key_id,
        }

    async def existing(tenant_id: str) -> store.Tenant:
        async with deps.pool.acquire() as conn:
            t = await store.load_tenant(conn, check_uuid(tenant_id, "tenant"))
        if t is None:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "No such tenant.")
        return t

    @r.get("/api/tenants/{tenant_id}", dependencies=operator)
    async def get_tenant(tenant_id: str) -> dict[str, Any]:
        t = await existing(tenant_id)
        async with deps.pool.acquire() as conn:
            return tenant_body(t, await store.load_credits(conn, t.id))

    @r.post("/api/tenants/{tenant_id}/credits", dependencies=operator)
    async def top_up(tenant_id: str, body: TopUpIn) -> dict[str, Any]:
        t = await existing(tenant_id)
        balance = await tenancy.top_up(deps.pool, t.id, body.credits, body.reference, deps.clock())
        return {"credits": credits_body(balance)}

    @r.put("/api/tenants/{tenant_id}/subscription", dependencies=operator)
    async def subscription(tenant_id: str, body: SubscriptionIn) -> dict[str, Any]:
        t = await existing(tenant_id)
        changed = await tenancy.set_subscription(deps.pool, t.id, body.status, deps.clock())
        return {"subscriptionStatus": body.status, "changed": changed}

    @r.post("/api/tenants/{tenant_id}/api-keys", status_code=201, dependencies=operator)
    async def operator_issue_key(tenant_id: str) -> dict[str, Any]:
        t = await existing(tenant_id)
        key = await tenancy.issue_key(deps.pool, t.id, deps.clock())
        return {"keyId": key.key_id, "apiKey": key.api_key}

    @r.get("/api/tenant")
    async def me(t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            return tenant_body(t, await store.load_credits(conn, t.id))

    @r.get("/api/credits")
    async def credits(
        t: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            balance = await store.load_credits(conn, t.id)
            entries = await store.ledger_entries(conn, t.id, limit, before)
        return {
            "credits": credits_body(balance),
            "ledger": [
                {
                    "id": e["id"],
                    "kind": e["kind"],
                    "credits": e["credits"],
                    "runToken": e["run_token"],
                    "reference": e["reference"],
                    "at": e["at"],
                }
                for e in entries
            ],
        }

    @r.get("/api/api-keys")
    async def keys(t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            rows = await store.list_api_keys(conn, t.id)
        return {
            "items": [
                {"keyId": k["id"], "createdAt": k["created_at"], "revokedAt": k["revoked_at"]} for k in rows
            ]
        }

    @r.post("/api/api-keys", status_code=201)
    async def issue_key(t: Tenant) -> dict[str, Any]:
        key = await tenancy.issue_key(deps.pool, t.id, deps.clock())
        return {"keyId": key.key_id, "apiKey": key.api_key}

    @r.delete("/api/api-keys/{key_id}", status_code=200)
    async def revoke_key(key_id: str, t: Tenant) -> dict[str, Any]:
        await tenancy.revoke_key(deps.pool, t.id, key_id, deps.clock())
        return {"keyId": key_id, "revoked": True}

    return r
