"""Tenants, keys, subscription and top-ups (each an event), tenant walls, and editing drafts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.events import decode
from tests.integration.enqueuer.enqueuer_harness import Harness, phones, running_enqueuer
from tests.support import eventually, records_of


@pytest.fixture(scope="module")
async def h() -> AsyncIterator[Harness]:
    async with running_enqueuer(f"enq_ten_{uuid.uuid4().hex[:8]}") as harness:
        yield harness


async def test_every_tenant_change_is_an_event(h: Harness) -> None:
    tenant, key = await h.tenant(credits=10)
    assert (
        await h.operator("POST", f"/api/tenants/{tenant}/credits", json={"credits": 5, "reference": "inv-1"})
    ).json()["credits"]["available"] == 15
    assert (
        await h.operator("PUT", f"/api/tenants/{tenant}/subscription", json={"status": "inactive"})
    ).json()["changed"]
    issued = await h.http.post("/api/api-keys", headers=key)
    assert issued.status_code == 201
    assert (await h.http.delete(f"/api/api-keys/{issued.json()['keyId']}", headers=key)).status_code == 200

    async def all_events() -> list[str] | None:
        types = [
            decode(raw)[0].type
            for _, raw in await records_of(h.broker.bootstrap, "tenant.events", tenant.encode())
        ]
        return types if len(types) >= 7 else None

    assert await eventually(all_events, timeout=30, what="tenant events") == [
        "TenantRegistered",
        "ApiKeyIssued",
        "CreditsToppedUp",
        "CreditsToppedUp",
        "SubscriptionChanged",
        "ApiKeyIssued",
        "ApiKeyRevoked",
    ]
    revoked = await h.http.get("/api/tenant", headers={"X-Api-Key": issued.json()["apiKey"]})
    assert revoked.status_code == 401
    ledger = (await h.http.get("/api/credits", headers=key)).json()["ledger"]
    assert [(e["kind"], e["credits"]) for e in ledger] == [("top_up", 5), ("top_up", 10)]


async def test_operator_endpoints_need_the_operator_key_and_valid_input(h: Harness) -> None:
    tenant, key = await h.tenant()
    assert (
        await h.http.post(f"/api/tenants/{tenant}/credits", json={"credits": 5}, headers=key)
    ).status_code == 401
    bad = await h.operator("POST", f"/api/tenants/{tenant}/credits", json={"credits": -5})
    assert bad.status_code == 400
    assert bad.json()["code"] == "VALIDATION_ERROR"
    region = await h.operator(
        "POST", "/api/tenants", json={"name": "x", "channel": "retail", "defaultRegion": "QQ"}
    )
    assert region.json()["code"] == "INVALID_REGION"
    assert (await h.operator("GET", f"/api/tenants/{uuid.uuid4()}")).status_code == 404


async def test_tenants_are_walls(h: Harness) -> None:
    _, a = await h.tenant()
    _, b = await h.tenant()
    c = await h.campaign(a, text="Mine", recipients=[{"phone": phones(1, 1)[0]}])
    for verb in ("enqueue", "pause", "cancel"):
        r = await h.command(b, c["id"], verb)
        assert r.status_code == 404, (verb, r.text)
    assert (await h.http.get(f"/api/campaigns/{c['id']}", headers=b)).status_code == 404
    assert (await h.http.patch(f"/api/campaigns/{c['id']}", json={"name": "x"}, headers=b)).status_code == 404
    assert (await h.get(a, c["id"]))["status"] == "draft"


async def test_drafts_can_be_edited_and_scheduled_until_they_send(h: Harness) -> None:
    _, key = await h.tenant()
    c = await h.campaign(key, text="Old", recipients=[{"phone": phones(10, 1)[0]}])
    r = await h.http.patch(
        f"/api/campaigns/{c['id']}",
        json={"text": "New {{first_name}}", "offerUrl": "https://shop.example/sale"},
        headers=key,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["messageText"], r.json()["offerUrl"]) == (
        "New {{first_name}}",
        "https://shop.example/sale",
    )
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await h.command(key, c["id"], "schedule", json={"scheduledAt": past})
    assert r.status_code == 400
    assert r.json()["code"] == "INVALID_SCHEDULE"
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await h.command(key, c["id"], "schedule", json={"scheduledAt": future})).json()[
        "status"
    ] == "scheduled"
    assert (
        await h.http.patch(f"/api/campaigns/{c['id']}", json={"name": "Renamed"}, headers=key)
    ).status_code == 200
    assert (await h.command(key, c["id"], "enqueue")).status_code == 200
    r = await h.http.patch(f"/api/campaigns/{c['id']}", json={"name": "Too late"}, headers=key)
    assert r.status_code == 409
    assert r.json()["code"] == "INVALID_STATUS"
    [batch] = await h.wait_batches(c["id"], (await h.get(key, c["id"]))["runToken"], 1)
    assert batch.offer_url == "https://shop.example/sale"
    assert batch.template == "New {{first_name}}"
