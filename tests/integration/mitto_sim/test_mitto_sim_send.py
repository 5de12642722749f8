"""The send, lookup and control routes over real HTTP, with injected faults."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from mitto_sim.app import create_app
from mitto_sim.settings import SimSettings
from mitto_sim.testing import serving

API_KEY = "test-key"
BULK = "/api/v1.1/Messages/sendmessagesbulk"
QUIET = {
    "reject_share": 0.0,
    "http_429_share": 0.0,
    "http_500_share": 0.0,
    "http_500_after_accept": True,
    "timeout_share": 0.0,
    "latency_ms": 0.0,
    "webhook_url": None,
}


@pytest_asyncio.fixture(scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serving(create_app(SimSettings(api_key=API_KEY))) as url:
        yield url


@pytest_asyncio.fixture
async def sim(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, headers={"X-Mitto-API-Key": API_KEY}) as client:
        (await client.post("/sim/reset")).raise_for_status()
        (await client.patch("/sim/config", json=QUIET)).raise_for_status()
        yield client


def item(phone: str, reference: str | None = "camp-1:r", text: str = "Hi!") -> dict[str, Any]:
    message: dict[str, Any] = {
        "trafficAccountId": "acc-1",
        "destination": phone,
        "sms": {"text": text, "sender": "Shop"},
    }
    if reference is not None:
        message["reference"] = reference
    return message


async def stats(sim: httpx.AsyncClient) -> dict[str, int]:
    response = await sim.get("/sim/stats")
    response.raise_for_status()
    result: dict[str, int] = response.json()
    return result


async def test_bulk_answers_in_request_order_with_per_item_rejections(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"reject_share": 0.5})  # even numbers are rejected
    items = [item("+306900000001"), item("+3069"), item("+306900000003", text=""), item("+306900000002")]
    items.append(item("+306900000005"))
    response = await sim.post(BULK, json={"messages": items})
    assert response.status_code == 200
    body = response.json()
    assert body["bulkId"]
    results = body["messages"]
    assert [r.get("error") for r in results] == [
        None,
        "invalid destination",
        "empty text",
        "destination rejected",
        None,
    ]
    assert all(r["trafficAccountId"] == "acc-1" for r in results)
    accepted = [r["messageId"] for r in results if "messageId" in r]
    assert len(accepted) == len(set(accepted)) == 2
    assert (await stats(sim))["items_rejected"] == 3


async def test_every_accepted_item_counts_one_send_per_campaign_and_phone(sim: httpx.AsyncClient) -> None:
    twice = item("+306900000001", reference="camp-1:r1")
    await sim.post(BULK, json={"messages": [twice, twice, item("+306900000002", reference="camp-1:r2")]})
    await sim.post(
        BULK, json={"messages": [item("+306900000001", reference="camp-2:r1"), item("+306900000009", None)]}
    )
    summary = (await sim.get("/sim/sends", params={"campaign": "camp-1"})).json()
    assert summary == {
        "campaign": "camp-1",
        "phones": 2,
        "sends": 3,
        "max_per_phone": 2,
        "duplicates": [{"phone": "+306900000001", "count": 2}],
    }
    assert (await sim.get("/sim/sends/camp-1/+306900000001")).json() == {"count": 2}
    assert (await sim.get("/sim/sends/camp-2/306900000001")).json() == {"count": 1}
    assert (await sim.get("/sim/sends/-/+306900000009")).json() == {"count": 1}


async def test_429_stores_nothing_and_says_when_to_retry(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"http_429_share": 1.0, "retry_after_seconds": 3})
    response = await sim.post(BULK, json={"messages": [item("+306900000001")]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert (await sim.get("/sim/sends", params={"campaign": "camp-1"})).json()["sends"] == 0
    counters = await stats(sim)
    assert (counters["injected_429"], counters["items_accepted"], counters["messages_stored"]) == (1, 0, 0)


async def test_500_after_accept_has_stored_and_counted_the_batch(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"http_500_share": 1.0})
    response = await sim.post(BULK, json={"messages": [item("+306900000001"), item("+306900000002")]})
    assert response.status_code == 500
    assert (await sim.get("/sim/sends", params={"campaign": "camp-1"})).json()["sends"] == 2
    assert (await stats(sim))["injected_500"] == 1


async def test_500_before_accept_stores_nothing(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"http_500_share": 1.0, "http_500_after_accept": False})
    response = await sim.post(BULK, json={"messages": [item("+306900000001")]})
    assert response.status_code == 500
    assert (await stats(sim))["messages_stored"] == 0


async def test_timeout_stores_the_batch_then_answers_too_late(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"timeout_share": 1.0, "timeout_seconds": 0.5})
    with pytest.raises(httpx.ReadTimeout):
        await sim.post(BULK, json={"messages": [item("+306900000001")]}, timeout=0.2)
    assert (await sim.get("/sim/sends/camp-1/+306900000001")).json() == {"count": 1}
    assert (await stats(sim))["injected_timeouts"] == 1


async def test_latency_is_added_to_each_send(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"latency_ms": 150})
    response = await sim.post(BULK, json={"messages": [item("+306900000001")]})
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.15


async def test_calls_without_the_api_key_are_refused(sim: httpx.AsyncClient) -> None:
    body = {"messages": [item("+306900000001")]}
    assert (await sim.post(BULK, json=body, headers={"X-Mitto-API-Key": "wrong"})).status_code == 401
    async with httpx.AsyncClient(base_url=str(sim.base_url)) as anonymous:
        assert (await anonymous.post(BULK, json=body)).status_code == 401
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
    assert (await stats(sim))["messages_stored"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"messages": []}',
        b'{"messages": {}}',
        b'[{"destination": "+306900000001"}]',
        b'{"messages": [{"trafficAccountId": "a", "destination": "+306900000001",'
        b' "sms": {"text": "x", "sender": "S"}}, {"trafficAccountId": "a", "destination": "+306900000002"}]}',
        b'{"messages": [{"trafficAccountId": "a", "destination": 306900000001,'
        b' "sms": {"text": "x", "sender": "S"}}]}',
    ],
)
async def test_a_malformed_body_is_refused_whole(sim: httpx.AsyncClient, body: bytes) -> None:
    response = await sim.post(BULK, content=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert (await stats(sim))["messages_stored"] == 0


async def test_too_many_items_are_refused(sim: httpx.AsyncClient) -> None:
    await sim.patch("/sim/config", json={"max_bulk_items": 2})
    response = await sim.post(BULK, json={"messages": [item(f"+30690000000{i}") for i in range(3)]})
    assert response.status_code == 400


async def test_single_send_answers_one_message_or_400(sim: httpx.AsyncClient) -> None:
    accepted = await sim.post("/api/v1.1/Messages/send", json=item("+306900000001"))
    assert accepted.status_code == 200
    [result] = accepted.json()["messages"]
    assert result["trafficAccountId"] == "acc-1"
    assert len(result["messageId"]) == 26
    rejected = await sim.post("/api/v1.1/Messages/send", json=item("0030690"))
    assert rejected.status_code == 400
    assert rejected.json() == {"error": "invalid destination"}


async def test_lookup_finds_sent_messages_only(sim: httpx.AsyncClient) -> None:
    long_unicode = "\N{GREEK SMALL LETTER ALPHA}" * 71  # outside GSM-7: 71 UCS-2 units, two parts
    message = item("+306900000001", reference="camp-9:r-1", text=long_unicode)
    sent = await sim.post(BULK, json={"messages": [message]})
    message_id = sent.json()["messages"][0]["messageId"]
    found = await sim.get(f"/api/v1.1/Messages/{message_id}")
    assert found.status_code == 200
    body = found.json()
    assert body["messageId"] == message_id
    assert body["text"] == long_unicode
    assert body["sender"]["name"] == "Shop"
    assert (body["deliveryStatus"], body["messageParts"], body["reference"]) == ("Sent", 2, "camp-9:r-1")
    assert body["trafficAccountId"] == "acc-1"
    assert body["createdAt"].endswith("Z")
    assert (await sim.get("/api/v1.1/Messages/01KC69MT19BRK5MSXG1V95YPHX")).status_code == 404


async def test_reset_forgets_messages_and_ids(sim: httpx.AsyncClient) -> None:
    sent = await sim.post(BULK, json={"messages": [item("+306900000001")]})
    message_id = sent.json()["messages"][0]["messageId"]
    await sim.post("/sim/reset")
    assert (await sim.get(f"/api/v1.1/Messages/{message_id}")).status_code == 404
    again = await sim.post(BULK, json={"messages": [item("+306900000001")]})
    assert again.json()["messages"][0]["messageId"] != message_id
    assert (await stats(sim))["messages_stored"] == 1


async def test_config_patch_validates_and_answers_the_new_config(sim: httpx.AsyncClient) -> None:
    bad = await sim.patch("/sim/config", json={"no_such_knob": 1})
    assert bad.status_code == 400
    assert "no_such_knob" in bad.json()["error"]
    assert (await sim.patch("/sim/config", json={"reject_share": 2})).status_code == 400
    good = await sim.patch("/sim/config", json={"dlr_batch_size": 7})
    assert good.status_code == 200
    assert good.json()["dlr_batch_size"] == 7
    assert (await sim.get("/sim/config")).json()["dlr_batch_size"] == 7


async def test_metrics_expose_counters_in_prometheus_text(sim: httpx.AsyncClient) -> None:
    await sim.post(BULK, json={"messages": [item("+306900000001"), item("+3")]})
    text = (await sim.get("/metrics")).text
    assert 'mitto_sim_items_total{outcome="rejected"}' in text
    assert 'mitto_sim_requests_total{endpoint="bulk",status="200"}' in text
    assert "mitto_sim_messages_stored 1.0" in text
