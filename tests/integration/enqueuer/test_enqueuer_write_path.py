"""The write paths on a real PostgreSQL and broker: a new campaign's audience copied on a second connection
and planned as it streams by, the fallback without one, the read-back walk of later runs, the byte limit of a
batch on each, and an import racing another writer of one of its phones."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from enqueuer import planning
from enqueuer.store import campaigns as campaign_store

from shared.db import create_pool
from shared.events import BatchQueued
from shared.links import TOKEN_LENGTH, LinkSettings, link_url
from shared.sms import compose, segments
from tests.integration.enqueuer.enqueuer_harness import Harness, deferred, phones, running_enqueuer
from tests.support import eventually

BATCH_SIZE, MAX_BYTES = 50, 10_000
LINK = link_url(LinkSettings().base_url, "unsubscribe", "A" * TOKEN_LENGTH)
# Everything JSON or COPY text escapes: quotes, backslashes, tabs, newlines, a control character, non-ASCII.
NAMES = [
    'Ada "the" Great',
    "back\\slash",
    "tab\there",
    "two\nlines",
    "bell\x07",
    "Ελένη",
    "😀 emoji",
    "plain",
]


@pytest.fixture(scope="module")
async def h() -> AsyncIterator[Harness]:
    name = f"enq_write_{uuid.uuid4().hex[:8]}"
    async with running_enqueuer(name, batch_size=BATCH_SIZE, max_batch_bytes=MAX_BYTES) as harness:
        yield harness


async def import_json(h: Harness, key: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    r = await h.http.post(
        "/api/contacts/import",
        content=orjson.dumps(rows),
        headers={**key, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


async def enqueued_batches(
    h: Harness, key: dict[str, str], campaign: str
) -> tuple[dict[str, Any], list[BatchQueued]]:
    r = await h.command(key, campaign, "enqueue")
    assert r.status_code == 200, r.text
    body = r.json()
    return body, await h.wait_batches(campaign, body["runToken"], body["enqueuedJobs"])


def recipients_json_bytes(batch: BatchQueued) -> int:
    return len(orjson.dumps([r.model_dump() for r in batch.recipients]))


async def test_copied_values_survive_every_json_and_copy_escape_and_are_priced_as_sent(h: Harness) -> None:
    _, key = await h.tenant(credits=100_000)
    template = "Hi {{first_name}} from {{city}}!"
    contacts = [
        {"phone": p, "firstName": NAMES[i % len(NAMES)], "city": f"C\\{i % 3}"} if i % 9 else {"phone": p}
        for i, p in enumerate(phones(10_000, 130))
    ]
    await import_json(h, key, contacts)
    c = await h.campaign(key, text=template, audience={"all": True})
    body, batches = await enqueued_batches(h, key, c["id"])

    expected = {
        row["phone"]: {
            k: v for k, v in (("first_name", row.get("firstName")), ("city", row.get("city"))) if v
        }
        for row in contacts
    }
    got = {r.phone: r.values for b in batches for r in b.recipients}
    assert got == expected
    assert body["queued"] == 130
    assert [len(b.recipients) for b in batches] == [50, 50, 30]
    assert len({r.id for b in batches for r in b.recipients}) == 130
    price = sum(
        segments(compose(template, v, marketing=True, offer_link=None, unsubscribe_link=LINK)).parts
        for v in expected.values()
    )
    assert body["cost"]["credits"] == price
    stored = await h.db(
        "SELECT phone, values_json FROM recipients WHERE campaign_id = $1", uuid.UUID(c["id"])
    )
    assert {r["phone"]: orjson.loads(r["values_json"]) for r in stored} == expected


async def test_batches_stay_under_the_byte_limit_when_copied_and_when_read_back(h: Harness) -> None:
    tenant, key = await h.tenant(credits=100_000)
    long_name = "Ελένη" * 20  # 100 letters, 200 bytes: 50 recipients are ~14 KB, more than MAX_BYTES
    await import_json(h, key, [{"phone": p, "firstName": long_name} for p in phones(20_000, 200)])
    c = await h.campaign(key, text="Hi {{first_name}}", audience={"all": True})
    body, first = await enqueued_batches(h, key, c["id"])

    assert body["enqueuedJobs"] == len(first) > 200 // BATCH_SIZE
    assert [b.batch_no for b in first] == list(range(len(first)))
    assert all(0 < recipients_json_bytes(b) <= MAX_BYTES for b in first)
    assert sorted(r.phone for b in first for r in b.recipients) == phones(20_000, 200)

    # Paused before anything was sent: the resumed run reads the same recipients back, in the same limits.
    assert (await h.command(key, c["id"], "pause")).status_code == 200
    await h.publish(c["id"], tenant, *(deferred(b) for b in first))
    await h.wait_settled(body["runToken"], len(first))
    r = await h.command(key, c["id"], "resume")
    assert r.status_code == 200, r.text
    again = await h.wait_batches(c["id"], r.json()["runToken"], r.json()["enqueuedJobs"])
    assert all(0 < recipients_json_bytes(b) <= MAX_BYTES for b in again)
    assert {(x.id, x.phone, x.values["first_name"]) for b in again for x in b.recipients} == {
        (x.id, x.phone, x.values["first_name"]) for b in first for x in b.recipients
    }
    assert r.json()["cost"]["credits"] == body["cost"]["credits"]


async def test_without_a_spare_connection_the_audience_is_inserted_and_planned_alike(h: Harness) -> None:
    tenant, key = await h.tenant(credits=100_000)
    await import_json(
        h, key, [{"phone": p, "firstName": f"N{i % 7}"} for i, p in enumerate(phones(30_000, 120))]
    )
    copied = await h.campaign(key, text="Hi {{first_name}}", audience={"all": True})
    inserted = await h.campaign(key, text="Hi {{first_name}}", audience={"all": True})
    body, batches = await enqueued_batches(h, key, copied["id"])

    plan = planning.PlanSettings(BATCH_SIZE, MAX_BYTES, LinkSettings().base_url, timedelta(hours=1))
    pool = await create_pool(h.dsn, "enqueuer", max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            campaign = await campaign_store.lock_campaign(conn, tenant, inserted["id"])
            assert campaign is not None
            status, direct = await planning.start_sending(
                conn, campaign, plan, datetime.now(UTC), readers=None
            )
    finally:
        await pool.close()
    assert status == 200
    others = await h.wait_batches(inserted["id"], direct["runToken"], direct["enqueuedJobs"])

    assert (direct["queued"], direct["enqueuedJobs"], direct["cost"]["credits"]) == (
        body["queued"],
        body["enqueuedJobs"],
        body["cost"]["credits"],
    )

    def content(found: list[BatchQueued]) -> set[tuple[str, str]]:
        return {(x.phone, x.values["first_name"]) for b in found for x in b.recipients}

    assert content(others) == content(batches)
    assert [len(b.recipients) for b in others] == [len(b.recipients) for b in batches]


async def test_an_import_racing_another_writer_of_one_of_its_phones_completes(h: Harness) -> None:
    tenant, key = await h.tenant()
    numbers = phones(40_000, 30)
    racer = await asyncpg.connect(h.dsn, server_settings={"search_path": "enqueuer"})
    try:
        tx = racer.transaction()
        await tx.start()
        now = datetime.now(UTC)
        await racer.execute(
            """INSERT INTO contacts (tenant_id, phone, opted_out_at, created_at, updated_at)
               VALUES ($1, $2, $3, $3, $3)""",
            uuid.UUID(tenant),
            numbers[7],
            now,
        )
        importing = asyncio.ensure_future(
            import_json(h, key, [{"phone": p, "firstName": "X"} for p in numbers])
        )

        async def blocked() -> bool:
            return bool(
                await racer.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event = 'transactionid'"""
                )
            )

        await eventually(blocked, timeout=30, what="the import waiting on the racing phone")
        await tx.commit()
        report = await importing
    finally:
        await racer.close()
    assert (report["received"], report["imported"], report["rejected"]) == (30, 29, 0)
    rows = await h.db("SELECT phone, opted_out_at FROM contacts WHERE tenant_id = $1", uuid.UUID(tenant))
    assert sorted(r["phone"] for r in rows) == numbers
    assert [r["phone"] for r in rows if r["opted_out_at"] is not None] == [numbers[7]]


async def test_every_filter_condition_selects_the_same_contacts_when_copied(h: Harness) -> None:
    """The copy's query takes its values as settings of its transaction, the preview's as parameters: both
    read every kind of condition alike, quotes and commas in values included."""
    _, key = await h.tenant(credits=100_000)
    vip = (await h.http.post("/api/lists", json={"name": 'VIP, "gold"'}, headers=key)).json()
    rows = [
        {
            "phone": p,
            "firstName": f"N{i}",
            "tags": ["new"] + (["o'neil,x"] if i % 2 else []) + (["vip"] if i % 3 else []),
            "city": ["Athens", 'Pátra, "west"', "Chania"][i % 3],
            "consent": "granted" if i % 5 else "unknown",
        }
        for i, p in enumerate(phones(50_000, 90))
    ]
    await import_json(h, key, rows)
    r = await h.http.post(f"/api/lists/{vip['id']}/members", json={"phones": phones(50_000, 60)}, headers=key)
    assert r.status_code == 200, r.text
    audience = {
        "filter": {
            "listIds": [vip["id"]],
            "tagsAny": ["o'neil,x", "vip"],
            "tagsAll": ["new"],
            "attributes": {"city": ["Athens", 'Pátra, "west"']},
            "consent": ["granted", "unknown"],
            "createdAfter": "2000-01-01T00:00:00+00:00",
            "createdBefore": "2999-01-01T00:00:00+00:00",
        }
    }
    preview = await h.http.post(
        "/api/audience/preview",
        json={"audience": audience, "text": "Hi", "messageType": "service"},
        headers=key,
    )
    assert preview.status_code == 200, preview.text
    c = await h.campaign(key, text="Hi {{first_name}}", messageType="service", audience=audience)
    body, batches = await enqueued_batches(h, key, c["id"])

    expected = {row["phone"] for i, row in enumerate(rows) if i < 60 and (i % 2 or i % 3) and i % 3 in (0, 1)}
    assert {x.phone for b in batches for x in b.recipients} == expected
    assert body["queued"] == preview.json()["count"] == len(expected) > 0
