"""Contacts imports, lists, segments, previews, audience campaigns, opt-outs, the scheduler's exactly-once
claim, stuck-run republishing and reservation expiry, on a real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from enqueuer import loops
from enqueuer.planning import PlanSettings

from shared.db import create_pool
from shared.events import ContactUnsubscribed, decode, encode, envelope_for
from tests.integration.enqueuer.enqueuer_harness import Harness, phones, running_enqueuer, sent
from tests.support import eventually

CSV = (
    "Phone,First Name,Email,City,Tags,Consent\n"
    "6940000001,Maria,maria@example.com,Athens,vip;new,yes\n"
    '"+30 694 000 0002","Nikos, Jr.",,Patras,new,\n'
    "12,Bad,,,,\n"
    "6940000003,Eleni,not-an-email,Athens,,\n"
    "6940000004,Kostas,,Athens,vip,no\n"
    "6940000001,Maria K,,Athens,vip,\n"
)


@pytest.fixture(scope="module")
async def h() -> AsyncIterator[Harness]:
    async with running_enqueuer(f"enq_aud_{uuid.uuid4().hex[:8]}", stuck_run_after_s=1.0) as harness:
        yield harness


async def import_csv(h: Harness, key: dict[str, str], body: str, **params: str) -> dict[str, object]:
    r = await h.http.post(
        "/api/contacts/import",
        content=body.encode(),
        headers={**key, "Content-Type": "text/csv"},
        params=params,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_csv_import_reports_bad_rows_and_imports_good_ones(h: Harness) -> None:
    _, key = await h.tenant()
    report = await import_csv(h, key, CSV)
    assert report["received"] == 6
    assert report["rejected"] == 2
    assert [(e["row"], e["reason"].split(":")[0]) for e in report["errors"]] == [  # type: ignore[attr-defined, index]
        (3, "not a valid phone number for its country"),
        (4, "invalid email 'not-an-email'"),
    ]
    assert report["imported"] == 3
    assert report["duplicates"] == 1
    contacts = (await h.http.get("/api/contacts", headers=key)).json()["items"]
    by_phone = {c["phone"]: c for c in contacts}
    assert set(by_phone) == {"+306940000001", "+306940000002", "+306940000004"}
    maria = by_phone["+306940000001"]
    assert maria["firstName"] == "Maria K"  # within a file, the last row of a phone wins
    assert maria["email"] is None
    assert maria["attributes"] == {"city": "Athens"}
    assert by_phone["+306940000002"]["firstName"] == "Nikos, Jr."
    assert by_phone["+306940000004"]["consent"] == "denied"


async def test_streamed_json_array_of_100k_rows_in_one_request(h: Harness) -> None:
    _, key = await h.tenant()
    rows = [
        {"phone": p, "firstName": f"N{i % 50}", "tags": ["bulk"]}
        for i, p in enumerate(phones(100_000, 100_000))
    ]
    rows[10] = {"phone": "nope"}
    payload = orjson.dumps(rows)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65_536):
            yield payload[i : i + 65_536]

    r = await h.http.post(
        "/api/contacts/import", content=chunks(), headers={**key, "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["received"], body["imported"], body["rejected"]) == (100_000, 99_999, 1)
    assert body["errors"][0]["row"] == 11


async def test_unreadable_file_is_refused_and_changes_nothing(h: Harness) -> None:
    _, key = await h.tenant()
    for content, media in (
        (b"name,city\nA,B\n", "text/csv"),
        (b'[{"phone": "6940000001"}', "application/json"),
    ):
        r = await h.http.post("/api/contacts/import", content=content, headers={**key, "Content-Type": media})
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "INVALID_FILE"
    r = await h.http.post("/api/contacts/import", content=b"x", headers={**key, "Content-Type": "image/png"})
    assert r.status_code == 415
    assert (await h.http.get("/api/contacts", headers=key)).json()["total"] == 0


async def test_lists_segments_preview_and_an_audience_campaign(h: Harness) -> None:
    tenant, key = await h.tenant(credits=1000)
    vip = (await h.http.post("/api/lists", json={"name": "VIP"}, headers=key)).json()
    await import_csv(h, key, CSV, listId=vip["id"])
    assert (await h.http.get(f"/api/lists/{vip['id']}", headers=key)).json()["members"] == 3
    seg = await h.http.post(
        "/api/segments",
        json={"name": "Athens VIPs", "filter": {"tagsAny": ["vip"], "attributes": {"city": "Athens"}}},
        headers=key,
    )
    assert seg.status_code == 201, seg.text
    # Kostas is a VIP in Athens but denied consent: a marketing audience leaves him out.
    preview = await h.http.post(
        "/api/audience/preview",
        json={"audience": {"segmentId": seg.json()["id"]}, "text": "Hi {{first_name}}"},
        headers=key,
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["count"] == 1
    assert preview.json()["sample"] == ["+306940000001"]
    assert preview.json()["cost"]["credits"] == 1

    c = await h.campaign(key, text="Hi {{first_name}} from {{city}}", audience={"listId": vip["id"]})
    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 200, r.text
    assert r.json()["queued"] == 2  # Maria and Nikos; Kostas denied consent
    [batch] = await h.wait_batches(c["id"], r.json()["runToken"], 1)
    assert {x.phone: x.values for x in batch.recipients} == {
        "+306940000001": {"first_name": "Maria K", "city": "Athens"},
        "+306940000002": {"first_name": "Nikos, Jr.", "city": "Patras"},
    }

    # An unsubscribe from that campaign opts the contact out of every later campaign of the tenant.
    maria = next(x for x in batch.recipients if x.phone == "+306940000001")
    unsubscribed = ContactUnsubscribed(
        recipient_id=maria.id, phone=maria.phone, unsubscribed_at=datetime.now(UTC)
    )
    producer_env = envelope_for(unsubscribed, occurred_at=datetime.now(UTC), tenant_id=tenant)
    await h.publish_raw("engagement.events", maria.phone.encode(), encode(producer_env))

    async def opted_out() -> bool:
        found = (await h.http.get("/api/contacts", params={"phone": maria.phone}, headers=key)).json()[
            "items"
        ]
        return bool(found and found[0]["optedOut"])

    await eventually(opted_out, timeout=30, what="the contact opted out")
    c2 = await h.campaign(key, text="Again", audience={"all": True})
    r2 = await h.command(key, c2["id"], "enqueue")
    assert r2.json()["queued"] == 1


async def test_bad_audience_input_gets_codes(h: Harness) -> None:
    _, key = await h.tenant()
    r = await h.http.post("/api/campaigns", json={"name": "x", "text": "y", "audience": {}}, headers=key)
    assert r.status_code == 400
    assert r.json()["code"] == "VALIDATION_ERROR"
    r = await h.http.post(
        "/api/campaigns",
        json={"name": "x", "text": "y", "audience": {"listId": str(uuid.uuid4())}},
        headers=key,
    )
    assert r.status_code == 404
    assert r.json()["code"] == "LIST_NOT_FOUND"
    r = await h.http.post(
        "/api/campaigns", json={"name": "x", "text": "y", "senderId": "TooLongSender1"}, headers=key
    )
    assert r.json()["code"] == "INVALID_SENDER_ID"
    c = await h.campaign(key, text="y")
    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 400
    assert r.json()["code"] == "NO_TARGET_AUDIENCE"
    assert (await h.command(key, "not-a-uuid", "enqueue")).json()["code"] == "INVALID_ID"
    assert (await h.command(key, str(uuid.uuid4()), "enqueue")).status_code == 404


async def test_two_schedulers_enqueue_each_due_campaign_exactly_once(h: Harness) -> None:
    _, key = await h.tenant(credits=10_000)
    ids = []
    for i in range(8):
        c = await h.campaign(
            key,
            text="Scheduled hello",
            recipients=[{"phone": p} for p in phones(200_000 + i * 10, 3)],
            scheduledAt=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        )
        assert c["status"] == "scheduled"
        ids.append(c["id"])
    plan = PlanSettings(5, 900_000, "http://127.0.0.1:8003", timedelta(hours=1))
    pools = [await create_pool(h.dsn, "enqueuer"), await create_pool(h.dsn, "enqueuer")]
    try:
        later = datetime.now(UTC) + timedelta(hours=2)
        counters = [loops.LoopCounters(), loops.LoopCounters()]
        await asyncio.gather(
            *(loops.run_due_campaigns(p, plan, later, k) for p, k in zip(pools, counters, strict=True))
        )
    finally:
        for p in pools:
            await p.close()
    rows = await h.db(
        "SELECT campaign_id::text AS c, count(*) AS n FROM runs WHERE campaign_id = ANY($1::uuid[]) GROUP BY 1",
        ids,
    )
    assert {r["c"]: r["n"] for r in rows} == dict.fromkeys(ids, 1)
    assert sum(k.scheduled for k in counters) == 8
    assert [(await h.get(key, i))["status"] for i in ids] == ["sending"] * 8


async def test_a_scheduled_campaign_without_credits_is_refused_once_with_a_reason(h: Harness) -> None:
    _, key = await h.tenant(credits=0)
    c = await h.campaign(
        key,
        text="Hi",
        recipients=[{"phone": phones(300_000, 1)[0]}],
        scheduledAt=(datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
    )

    async def refused() -> dict[str, object] | None:
        body = await h.get(key, c["id"])
        return body if body["lastError"] else None

    body = await eventually(refused, timeout=30, what="the refusal")
    assert body["status"] == "scheduled"
    assert body["lastError"]["code"] == "INSUFFICIENT_CREDITS"  # type: ignore[index]


async def test_a_quiet_run_gets_its_unclaimed_batches_republished_with_the_same_contents(h: Harness) -> None:
    tenant, key = await h.tenant(credits=100)
    c = await h.campaign(
        key,
        text="Hi {{first_name}}",
        recipients=[{"phone": p, "firstName": "Al"} for p in phones(400_000, 7)],
    )
    run = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    first = await h.wait_batches(c["id"], run, 2)
    await h.publish(c["id"], tenant, sent(first[0]))

    async def republished() -> bool:
        rows = await h.db("SELECT republished FROM runs WHERE run_token = $1", run)
        return bool(rows[0]["republished"])

    await eventually(republished, timeout=30, what="the republication")
    records = [decode(raw) for _, raw in await h.all_batches(c["id"])]
    copies = [(env.event_id, e) for env, e in records if e.batch_id == first[1].batch_id]  # type: ignore[attr-defined]
    assert len(copies) >= 2
    assert len({eid for eid, _ in copies}) == 1
    assert all(e == first[1] for _, e in copies)
    assert not any(e.batch_id == first[0].batch_id for _, e in copies)  # type: ignore[attr-defined]
