"""Delivery reports over real HTTP to a recording webhook: batching, spellings, duplicates, order, retries."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mitto_sim.app import create_app
from mitto_sim.settings import SimSettings
from mitto_sim.testing import WebhookRecorder, serving

BULK = "/api/v1.1/Messages/sendmessagesbulk"


@pytest_asyncio.fixture(scope="module")
async def servers() -> AsyncIterator[tuple[str, str, WebhookRecorder]]:
    recorder = WebhookRecorder()
    async with serving(create_app(SimSettings())) as sim_url, serving(recorder.app) as webhook_url:
        yield sim_url, f"{webhook_url}/dlr", recorder


@pytest.fixture
def recorder(servers: tuple[str, str, WebhookRecorder]) -> WebhookRecorder:
    return servers[2]


@pytest_asyncio.fixture
async def sim(servers: tuple[str, str, WebhookRecorder]) -> AsyncIterator[httpx.AsyncClient]:
    sim_url, webhook_url, recorder = servers
    quiet = {
        "webhook_url": webhook_url,
        "webhook_headers": {},
        "dlr_delay_ms": 60_000,  # reports wait for /sim/flush-dlr unless a test shortens this
        "dlr_jitter_ms": 0,
        "dlr_batch_size": 500,
        "dlr_single_object": False,
        **{f"dlr_{kind}_share": 0.0 for kind in ("failure", "duplicate", "sent_first", "out_of_order")},
        "dlr_alt_spelling_share": 0.0,
    }
    async with httpx.AsyncClient(base_url=sim_url) as client:
        (await client.post("/sim/reset")).raise_for_status()
        (await client.patch("/sim/config", json=quiet)).raise_for_status()
        recorder.clear()
        yield client


async def send(sim: httpx.AsyncClient, count: int) -> list[str]:
    items = [
        {
            "trafficAccountId": "acc-1",
            "destination": f"+3069000{i:05d}",
            "sms": {"text": "Hi", "sender": "Shop"},
            "reference": f"camp-1:r{i}",
        }
        for i in range(count)
    ]
    response = await sim.post(BULK, json={"messages": items})
    response.raise_for_status()
    return [r["messageId"] for r in response.json()["messages"]]


async def flush(sim: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await sim.post("/sim/flush-dlr")).json()
    return result


async def stats(sim: httpx.AsyncClient) -> dict[str, int]:
    result: dict[str, int] = (await sim.get("/sim/stats")).json()
    return result


async def test_flush_sends_pending_reports_in_batches_with_custom_headers(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch(
        "/sim/config", json={"dlr_batch_size": 3, "webhook_headers": {"X-Webhook-Secret": "s3cret"}}
    )
    ids = await send(sim, 7)
    assert recorder.bodies == []
    assert (await stats(sim))["reports_pending"] == 7
    assert await flush(sim) == {"sent": 7, "pending": 0, "error": None}
    assert [len(body) for body in recorder.bodies] == [3, 3, 1]
    assert [r["messageId"] for r in recorder.reports] == ids
    assert {r["deliveryStatus"] for r in recorder.reports} == {"Delivered"}
    assert all(r["error"] is None and r["updatedAt"].endswith("Z") for r in recorder.reports)
    assert all(h["x-webhook-secret"] == "s3cret" for h in recorder.headers)
    assert (await stats(sim))["reports_delivered"] == 7


async def test_single_reports_may_come_as_bare_objects(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_batch_size": 1, "dlr_single_object": True})
    await send(sim, 2)
    await flush(sim)
    assert all(isinstance(body, dict) for body in recorder.bodies)
    assert len(recorder.bodies) == 2


async def test_lookup_shows_the_final_status_once_its_report_is_acknowledged(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_failure_share": 1.0})
    [message_id] = await send(sim, 1)
    before = (await sim.get(f"/api/v1.1/Messages/{message_id}")).json()
    assert before["deliveryStatus"] == "Sent"
    await flush(sim)
    after = (await sim.get(f"/api/v1.1/Messages/{message_id}")).json()
    assert after["deliveryStatus"] == "Failure"
    assert after["updatedAt"] >= before["updatedAt"]
    assert recorder.reports[0]["error"] == "Undeliverable"
    assert (await stats(sim))["reports_failed"] == 1


async def test_alternative_spelling_uses_status_errorcode_timestamp(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_alt_spelling_share": 1.0})
    await send(sim, 3)
    await flush(sim)
    assert all(set(r) == {"messageId", "status", "errorcode", "timestamp"} for r in recorder.reports)


async def test_duplicated_reports_come_twice_but_count_once(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_duplicate_share": 1.0})
    ids = await send(sim, 5)
    await flush(sim)
    assert Counter(r["messageId"] for r in recorder.reports) == dict.fromkeys(ids, 2)
    counters = await stats(sim)
    assert (counters["reports_delivered"], counters["duplicate_reports_sent"]) == (5, 5)


async def test_sent_reports_come_before_or_after_the_final_one(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_sent_first_share": 1.0})
    [first] = await send(sim, 1)
    await flush(sim)
    assert [r["deliveryStatus"] for r in recorder.reports] == ["Sent", "Delivered"]
    recorder.clear()
    await sim.patch("/sim/config", json={"dlr_sent_first_share": 0.0, "dlr_out_of_order_share": 1.0})
    [late] = await send(sim, 1)
    await flush(sim)
    assert [r["deliveryStatus"] for r in recorder.reports] == ["Delivered", "Sent"]
    assert (await sim.get(f"/api/v1.1/Messages/{late}")).json()["deliveryStatus"] == "Delivered"
    assert (await stats(sim))["reports_sent"] == 2
    assert first != late


async def test_reports_refused_by_the_webhook_are_kept_and_sent_again(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    ids = await send(sim, 4)
    recorder.fail_next(1, status=503)
    refused = await sim.post("/sim/flush-dlr")
    assert refused.status_code == 502
    assert refused.json() == {"sent": 0, "pending": 4, "error": "webhook answered 503"}
    assert recorder.reports == []
    assert await flush(sim) == {"sent": 4, "pending": 0, "error": None}
    assert sorted(r["messageId"] for r in recorder.reports) == sorted(ids)
    counters = await stats(sim)
    assert (counters["callback_errors"], counters["reports_delivered"]) == (1, 4)


async def test_background_dispatch_retries_until_the_webhook_accepts(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    await sim.patch("/sim/config", json={"dlr_delay_ms": 20, "dlr_jitter_ms": 30, "dlr_batch_size": 4})
    recorder.fail_next(2, status=503)
    ids = await send(sim, 10)
    for _ in range(200):
        if (await stats(sim))["reports_delivered"] == 10:
            break
        await asyncio.sleep(0.025)
    counters = await stats(sim)
    assert (counters["reports_delivered"], counters["reports_pending"]) == (10, 0)
    assert counters["callback_errors"] == 2
    assert sorted(r["messageId"] for r in recorder.reports) == sorted(ids)


async def test_queued_reports_wait_while_no_webhook_is_configured(
    sim: httpx.AsyncClient, recorder: WebhookRecorder
) -> None:
    webhook = (await sim.get("/sim/config")).json()["webhook_url"]
    await send(sim, 2)
    await sim.patch("/sim/config", json={"webhook_url": None})
    refused = await sim.post("/sim/flush-dlr")
    assert (refused.status_code, refused.json()["pending"]) == (502, 2)
    await send(sim, 3)  # accepted without a webhook: no reports planned
    assert (await stats(sim))["reports_pending"] == 2
    await sim.patch("/sim/config", json={"webhook_url": webhook})
    assert (await flush(sim))["sent"] == 2
    assert len(recorder.reports) == 2
