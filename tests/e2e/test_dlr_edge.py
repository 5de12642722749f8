"""dlr-ingest at the edge of the whole system: the links in the texts Mitto received lead to the offer and
to an unsubscribe that the enqueuer applies and the projector counts; a status refresh asks Mitto about
the messages the projector knows as sent without a final status."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deploy.local.stack import LocalStack, StackOptions
from shared.events import DeliveryReported, decode
from tests.support import Api, eventually, greek_mobiles, records_of

OFFER = "https://corner-shop.example/autumn?utm_source=sms"


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[LocalStack]:
    s = LocalStack(StackOptions(sim={"dlr_delay_ms": "200", "dlr_batch_size": "100"}))
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def api(stack: LocalStack) -> AsyncIterator[Api]:
    a = Api(stack)
    yield a
    await a.close()


async def recipients(api: Api, key: str, campaign: str) -> list[dict[str, Any]]:
    r = await api.http.get(
        f"{api.stack.url('projector')}/api/campaigns/{campaign}/recipients",
        params={"limit": 1000},
        headers={"X-Api-Key": key},
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def sent_text(api: Api, message_id: str) -> str:
    r = await api.http.get(
        f"{api.stack.url('mitto-sim')}/api/v1.1/Messages/{message_id}",
        headers={"X-Mitto-API-Key": "local-sim-key"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


async def test_links_in_the_sent_text_redirect_unsubscribe_and_are_counted(
    stack: LocalStack, api: Api
) -> None:
    _, key = await api.new_tenant("Corner Shop", channel="shopify")
    phones = greek_mobiles(3_100_000, 5)
    campaign = await api.new_campaign(key, phones, offerUrl=OFFER)
    assert (await api.enqueue(key, campaign)).status_code == 200
    await api.wait_status(key, campaign, "completed")

    async def with_message_ids() -> list[dict[str, Any]]:
        rows = await recipients(api, key, campaign)
        return rows if len(rows) == 5 and all(r["providerMessageId"] for r in rows) else []

    rows = await eventually(with_message_ids, what="every recipient with a provider message id")
    first = rows[0]
    text = await sent_text(api, first["providerMessageId"])
    base = re.escape(stack.url("dlr-ingest"))
    offer_link = re.search(rf"{base}/l/[A-Za-z0-9_-]+", text)
    unsubscribe_link = re.search(rf"{base}/u/[A-Za-z0-9_-]+", text)
    assert offer_link, text
    assert unsubscribe_link, text

    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as browser:
        click = await browser.get(offer_link.group(0))
        assert click.status_code == 302
        assert click.headers["location"] == OFFER
        page = await browser.get(unsubscribe_link.group(0))
        assert page.status_code == 200
        assert "You are unsubscribed from Corner Shop" in page.text
        forged = await browser.get(offer_link.group(0)[:-2] + "xx")
        assert forged.status_code == 404

    async def counted() -> dict[str, Any] | None:
        stats = (await api.status(key, campaign))["stats"]
        return stats if stats["clicked"] == 1 and stats["unsubscribed"] == 1 else None

    await eventually(counted, timeout=60, what="the projector to count the click and the unsubscribe")

    async def opted_out() -> bool:
        r = await api.http.get(
            f"{stack.url('enqueuer')}/api/contacts",
            params={"phone": first["phone"]},
            headers={"X-Api-Key": key},
        )
        assert r.status_code == 200, r.text
        return any(c["optedOut"] for c in r.json()["items"])

    await eventually(opted_out, timeout=60, what="the enqueuer to opt the contact out")


async def test_a_refresh_asks_mitto_about_messages_without_a_final_status(
    stack: LocalStack, api: Api
) -> None:
    tenant, key = await api.new_tenant("Refresh shop")
    async with httpx.AsyncClient(base_url=stack.url("mitto-sim"), timeout=30) as sim:
        # Mitto holds the reports back: the messages stay sent without a final status.
        (await sim.patch("/sim/config", json={"dlr_delay_ms": 3_600_000})).raise_for_status()
        try:
            campaign = await api.new_campaign(key, greek_mobiles(3_200_000, 4))
            assert (await api.enqueue(key, campaign)).status_code == 200
            await api.wait_status(key, campaign, "completed")
            operator = {"X-Api-Key": stack.operator_key}
            refresh = f"{stack.url('dlr-ingest')}/api/operator/refresh"
            body = {"olderThanMinutes": 0, "campaignId": campaign, "limit": 100}

            async def refreshed() -> dict[str, Any] | None:
                r = await api.http.post(refresh, json=body, headers=operator)
                assert r.status_code == 200, r.text
                summary: dict[str, Any] = r.json()
                return summary if summary["candidates"] == 4 else None

            summary = await eventually(refreshed, timeout=60, what="four refresh candidates")
            assert (summary["lookedUp"], summary["published"], summary["notFound"]) == (4, 4, 0)
            assert summary["byStatus"] == {"Sent": 4}
            rows = await recipients(api, key, campaign)
            for row in rows:
                found = await records_of(
                    stack.broker.bootstrap, "delivery.reports", row["providerMessageId"].encode()
                )
                events = [decode(value) for _, value in found]
                refreshes = [
                    (e, ev) for e, ev in events if isinstance(ev, DeliveryReported) and ev.source == "refresh"
                ]
                assert refreshes, row
                envelope, event = refreshes[0]
                assert (envelope.tenant_id, envelope.campaign_id, event.raw_status) == (
                    tenant,
                    campaign,
                    "Sent",
                )

            # Once Mitto's reports arrive, nothing is left to refresh.
            (await sim.patch("/sim/config", json={"dlr_delay_ms": 200})).raise_for_status()
            (await sim.post("/sim/flush-dlr")).raise_for_status()

            async def settled() -> bool:
                r = await api.http.post(refresh, json=body, headers=operator)
                return bool(r.status_code == 200 and r.json()["candidates"] == 0)

            await eventually(settled, timeout=60, what="no candidate left after the reports")
        finally:
            await sim.patch("/sim/config", json={"dlr_delay_ms": 200})
