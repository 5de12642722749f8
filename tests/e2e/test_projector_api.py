"""The read API end to end (every service, the simulator, the broker, PostgreSQL): campaigns of a retail
owner and a Shopify shop listed, filtered and paged; tenant walls; recipients paged, filtered and exported;
live progress; totals; status-refresh candidates and the reconciliation report; replay from the command
line, comparing and then swapping, while the API answers."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from deploy.local.stack import REPO, LocalStack, StackOptions
from tests.support import Api, eventually, greek_mobiles


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[LocalStack]:
    s = LocalStack(
        StackOptions(
            batch_size=1000,
            sim={
                "reject_share": "0.02",
                "dlr_delay_ms": "200",
                "dlr_batch_size": "200",
                "dlr_sent_first_share": "0.2",
                "dlr_duplicate_share": "0.1",
                "dlr_failure_share": "0.05",
            },
        )
    )
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


@pytest.fixture(scope="module")
async def world(stack: LocalStack) -> AsyncIterator[dict[str, Any]]:
    """A retail owner's campaign fully delivered, and a Shopify shop's campaign whose reports are held back."""
    api = Api(stack)
    try:
        _, retail = await api.new_tenant("Retail owner", "retail")
        _, shop = await api.new_tenant("Shopify shop", "shopify")
        a = await api.new_campaign(retail, greek_mobiles(2_000_000, 3000), name="Winter sale")
        other = await api.new_campaign(retail, greek_mobiles(2_100_000, 10), name="Draft one")
        assert (await api.enqueue(retail, a)).status_code == 200
        done = await api.wait_status(retail, a, "completed")

        async def all_reported() -> dict[str, Any] | None:
            body = await api.status(retail, a)
            return body if body["stats"]["pendingDelivery"] == 0 else None

        a_final = await eventually(all_reported, what="every report of the retail campaign")
        hold = await api.http.patch(f"{stack.url('mitto-sim')}/sim/config", json={"dlr_delay_ms": 600_000})
        assert hold.status_code == 200, hold.text
        b = await api.new_campaign(shop, greek_mobiles(2_200_000, 1000), name="Shop drop")
        assert (await api.enqueue(shop, b)).status_code == 200
        b_sent = await api.wait_status(shop, b, "completed")
        yield {"api": api, "retail": retail, "shop": shop, "a": a, "b": b, "draft": other, "a_final": a_final,
               "b_sent": b_sent, "a_done": done}  # fmt: skip
    finally:
        await api.close()


def projector(stack: LocalStack) -> str:
    return stack.url("projector")


async def get(api: Api, url: str, key: str | None, **params: Any) -> httpx.Response:
    return await api.http.get(url, params=params, headers={"X-Api-Key": key} if key else {})


async def test_campaigns_are_listed_per_tenant_with_filters_cursor_and_totals(
    stack: LocalStack, world: dict[str, Any]
) -> None:
    api, retail, shop = world["api"], world["retail"], world["shop"]
    url = f"{projector(stack)}/api/campaigns"
    mine = (await get(api, url, retail)).json()
    assert {c["id"] for c in mine["items"]} == {world["a"], world["draft"]}
    assert mine["total"] == 2
    assert mine["totals"]["total"] == 3000
    assert mine["totals"]["byStatus"] == {"completed": 1, "draft": 1}
    sent = next(c for c in mine["items"] if c["id"] == world["a"])
    assert sent["progress"] == 100.0
    assert sent["channel"] == "retail"

    completed = (await get(api, url, retail, status="completed")).json()
    assert [c["id"] for c in completed["items"]] == [world["a"]]
    assert (await get(api, url, retail, status="sent")).json()["total"] == 1  # Shopify's legacy name
    assert (await get(api, url, retail, channel="shopify")).json()["items"] == []
    assert [c["id"] for c in (await get(api, url, retail, q="WINTER")).json()["items"]] == [world["a"]]

    first = (await get(api, url, retail, pageSize=1)).json()
    second = (await get(api, url, retail, pageSize=1, cursor=first["nextCursor"])).json()
    assert len(first["items"]) == len(second["items"]) == 1
    assert second["nextCursor"] is None
    assert {first["items"][0]["id"], second["items"][0]["id"]} == {world["a"], world["draft"]}
    by_page = (await get(api, url, retail, pageSize=1, page=2)).json()
    assert by_page["items"][0]["id"] == second["items"][0]["id"]
    assert by_page["page"] == 2

    theirs = (await get(api, url, shop)).json()
    assert [c["id"] for c in theirs["items"]] == [world["b"]]
    everyone = (await get(api, url, stack.operator_key, channel="shopify")).json()
    assert world["b"] in {c["id"] for c in everyone["items"]}
    assert world["a"] not in {c["id"] for c in everyone["items"]}

    for params, code in (({"status": "nope"}, "INVALID_STATUS"), ({"channel": "sms"}, "INVALID_CHANNEL"),
                         ({"cursor": "garbage"}, "INVALID_CURSOR"), ({"pageSize": 0}, "VALIDATION_ERROR")):  # fmt: skip
        bad = await get(api, url, retail, **params)
        assert bad.status_code == 400, params
        assert bad.json()["code"] == code
        assert bad.json()["message"]


async def test_tenants_are_walls(stack: LocalStack, world: dict[str, Any]) -> None:
    api = world["api"]
    base = f"{projector(stack)}/api/campaigns/{world['b']}"
    for path in ("", "/status", "/recipients"):
        r = await get(api, base + path, world["retail"])
        assert r.status_code == 404, path
        assert r.json()["code"] == "RESOURCE_NOT_FOUND"
    assert (await get(api, base, None)).status_code == 401
    assert (await get(api, base, "sk_not_a_key")).json()["code"] == "UNAUTHORIZED"
    assert (await get(api, f"{projector(stack)}/api/campaigns/not-a-uuid", world["retail"])).json()[
        "code"
    ] == ("INVALID_ID")
    detail = (await get(api, base, world["shop"])).json()
    assert detail["id"] == world["b"]
    assert detail["channel"] == "shopify"


async def test_recipients_page_filter_and_export_agree_with_the_stats(
    stack: LocalStack, world: dict[str, Any]
) -> None:
    api, retail = world["api"], world["retail"]
    stats = world["a_final"]["stats"]
    url = f"{projector(stack)}/api/campaigns/{world['a']}/recipients"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (await get(api, url, retail, limit=700, **({"cursor": cursor} if cursor else {}))).json()
        seen += page["items"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len({r["id"] for r in seen}) == 3000
    assert [r["id"] for r in seen] == sorted(r["id"] for r in seen)
    counts = {s: sum(r["status"] == s for r in seen) for s in ("sent", "failed")}
    assert counts == {"sent": stats["sent"], "failed": stats["failed"]}
    failed = (await get(api, url, retail, status="failed", limit=1000)).json()["items"]
    assert len(failed) == stats["failed"]
    delivered = (await get(api, url, retail, deliveryStatus="delivered", limit=1000)).json()["items"]
    assert len(delivered) == min(stats["delivered"], 1000)
    assert all(r["deliveryStatus"] == "Delivered" and r["deliveredAt"] for r in delivered)
    assert all(r["providerMessageId"] and r["bulkId"] for r in delivered)

    export = await api.http.get(url, params={"format": "csv"}, headers={"X-Api-Key": retail})
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == 3000
    assert sum(r["status"] == "failed" for r in rows) == stats["failed"]
    bad = await get(api, url, retail, status="lost")
    assert bad.status_code == 400
    assert bad.json()["code"] == "INVALID_STATUS"


async def test_live_progress_streams_the_status_body(stack: LocalStack, world: dict[str, Any]) -> None:
    api = world["api"]
    url = f"{projector(stack)}/api/campaigns/{world['a']}/progress"
    async with api.http.stream("GET", url, headers={"X-Api-Key": world["retail"]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        async for line in r.aiter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert "event: progress" in lines
    body = orjson.loads(lines[-1][len("data: ") :])
    assert body["campaign"]["id"] == world["a"]
    assert body["stats"]["total"] == 3000


async def test_totals_per_tenant_and_channel(stack: LocalStack, world: dict[str, Any]) -> None:
    api = world["api"]
    own = (await get(api, f"{projector(stack)}/api/totals", world["shop"])).json()
    assert [i["channel"] for i in own["items"]] == ["shopify"]
    assert own["channels"]["shopify"]["total"] == 1000
    everyone = (await get(api, f"{projector(stack)}/api/totals", stack.operator_key)).json()
    assert everyone["channels"]["retail"]["total"] >= 3000
    assert everyone["channels"]["shopify"]["total"] >= 1000


async def test_refresh_candidates_and_reconciliation_for_operators(
    stack: LocalStack, world: dict[str, Any]
) -> None:
    api, b = world["api"], world["b"]
    url = f"{projector(stack)}/api/operator/refresh-candidates"
    accepted = world["b_sent"]["stats"]["accepted"]
    assert (await get(api, url, world["shop"], olderThanMinutes=0)).status_code == 401
    assert (await get(api, url, None, olderThanMinutes=0)).status_code == 401
    found = (await get(api, url, stack.operator_key, olderThanMinutes=0, limit=5000, campaignId=b)).json()[
        "items"
    ]
    assert len(found) == accepted
    assert {i["campaignId"] for i in found} == {b}
    assert [i["sentAt"] for i in found] == sorted(i["sentAt"] for i in found)
    limited = (await get(api, url, stack.operator_key, olderThanMinutes=0, limit=10, campaignId=b)).json()[
        "items"
    ]
    assert limited == found[:10]
    assert (await get(api, url, stack.operator_key, olderThanMinutes=600, campaignId=b)).json()["items"] == []
    one = (await get(api, f"{projector(stack)}/api/campaigns/{b}/recipients", world["shop"], status="sent",
                     limit=1)).json()["items"][0]  # fmt: skip
    by_bulk = (
        await get(api, url, stack.operator_key, olderThanMinutes=0, limit=5000, bulkId=one["bulkId"])
    ).json()
    assert 0 < len(by_bulk["items"]) <= 1000
    both = await get(api, url, stack.operator_key, campaignId=b, bulkId="x")
    assert both.json()["code"] == "CONFLICTING_PARAMETERS"

    report = (await get(api, f"{projector(stack)}/api/operator/reconciliation", stack.operator_key,
                        deliveryHours=0.0001)).json()  # fmt: skip
    assert report["sentWithoutFinalStatus"]["count"] >= accepted
    assert b in {i["campaignId"] for i in report["sentWithoutFinalStatus"]["items"]}
    assert "dlr_ingest refresh" in report["sentWithoutFinalStatus"]["command"]
    assert report["stuckProcessing"]["count"] == 0

    flushed = await api.http.post(f"{stack.url('mitto-sim')}/sim/flush-dlr")
    assert flushed.status_code == 200

    async def none_left() -> bool:
        left = await get(api, url, stack.operator_key, olderThanMinutes=0, campaignId=b)
        return left.json()["items"] == []

    await eventually(none_left, what="every held report projected")


async def test_the_api_documents_itself(stack: LocalStack, world: dict[str, Any]) -> None:
    doc = (await world["api"].http.get(f"{projector(stack)}/openapi.json")).json()
    for path in ("/api/campaigns", "/api/campaigns/{campaign_id}", "/api/campaigns/{campaign_id}/status",
                 "/api/campaigns/{campaign_id}/recipients", "/api/campaigns/{campaign_id}/progress",
                 "/api/operator/refresh-candidates", "/api/operator/reconciliation"):  # fmt: skip
        assert path in doc["paths"], path
    assert "Stats" in doc["components"]["schemas"]


async def test_replay_compares_then_swaps_while_the_api_answers(
    stack: LocalStack, world: dict[str, Any]
) -> None:
    api, retail, a = world["api"], world["retail"], world["a"]
    env = {**stack.environment("projector"), "LOG_LEVEL": "WARNING"}
    before = await api.status(retail, a)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "projector", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    dry = await asyncio.to_thread(run, "rebuild", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert orjson.loads(dry.stdout)["checksums"]["equal"] is True

    answers: list[int] = []
    swap = asyncio.create_task(asyncio.to_thread(run, "rebuild"))
    while not swap.done():
        answers.append((await get(api, f"{projector(stack)}/api/campaigns/{a}/status", retail)).status_code)
        await asyncio.sleep(0.05)
    done = await swap
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["swapped"] is True
    assert answers
    assert set(answers) == {200}
    after = await api.status(retail, a)
    assert after["stats"] == before["stats"]
    assert after["deliveryStatus"] == before["deliveryStatus"]
    check = await asyncio.to_thread(run, "checksum")
    assert check.returncode == 0, check.stderr
    assert set(orjson.loads(check.stdout)["live"]["tables"]) >= {"campaigns", "recipients", "deliveries"}
    sums = await get(api, f"{projector(stack)}/api/operator/checksum", stack.operator_key)
    assert sums.status_code == 200
    assert sums.json()["tables"]["recipients"]["rows"] >= 4000
    assert (await get(api, f"{projector(stack)}/api/operator/checksum", retail)).status_code == 401
    report = await asyncio.to_thread(run, "reconcile", "--stuck-minutes", "1")
    assert report.returncode == 0, report.stderr
    sections = orjson.loads(report.stdout)
    kinds = (
        "stuckProcessing",
        "sentWithoutFinalStatus",
        "ambiguousBatches",
        "stuckRuns",
        "outcomesWaitingForRun",
    )
    assert set(kinds) <= set(sections)
    assert all(sections[k]["command"] for k in kinds)
