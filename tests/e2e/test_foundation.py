"""One campaign end to end on the real broker, PostgreSQL, the simulator and the four services."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from deploy.local.stack import LocalStack, StackOptions
from tests.support import Api, caught_up, eventually, greek_mobiles, records_of, republish

CONSUMERS = {
    ("sender", "sender"): ["sms.batches"],
    ("enqueuer", "enqueuer"): ["sms.outcomes"],
    ("projector", "projector"): [
        "tenant.events",
        "campaign.events",
        "sms.batches",
        "sms.outcomes",
        "delivery.reports",
    ],
}


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[LocalStack]:
    s = LocalStack(StackOptions(sim={"reject_share": "0.01", "dlr_delay_ms": "300", "dlr_batch_size": "200"}))
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


@pytest.fixture(scope="module")
def finished() -> dict[str, str]:
    """The first test's campaign, reused by the redelivery test."""
    return {}


async def test_ten_thousand_recipients_complete_with_exact_counts(api: Api, finished: dict[str, str]) -> None:
    _, key = await api.new_tenant()
    phones = greek_mobiles(1_000_000, 10_000)
    campaign = await api.new_campaign(key, phones)

    r = await api.enqueue(key, campaign)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert body["queued"] == 10_000
    assert body["enqueuedJobs"] == 2

    done = await api.wait_status(key, campaign, "completed")
    assert done["stats"]["total"] == 10_000
    assert done["stats"]["sent"] == 9_900
    assert done["stats"]["failed"] == 100
    assert done["stats"]["processed"] == 10_000

    async def all_reports_projected() -> dict[str, object] | None:
        sim = await api.sim("/sim/stats")
        status = await api.status(key, campaign)
        delivered = status["stats"]["delivered"]
        return status if delivered == 9_900 and delivered == sim["reports_delivered"] else None

    final = await eventually(all_reports_projected, what="every delivery report projected")
    assert final["deliveryStatus"] == {"Delivered": 9_900}
    sends = await api.sim(f"/sim/sends?campaign={campaign}")
    assert sends["phones"] == 9_900
    assert sends["sends"] == 9_900
    assert sends["max_per_phone"] == 1
    finished.update(campaign=campaign, key=key)


async def test_second_enqueue_and_redelivered_events_change_nothing(
    stack: LocalStack, api: Api, finished: dict[str, str]
) -> None:
    if not finished:
        pytest.skip("needs the finished campaign of the previous test")
    campaign, key = finished["campaign"], finished["key"]
    before_status = await api.status(key, campaign)
    before_sim = await api.sim("/sim/stats")

    again = await api.enqueue(key, campaign)
    assert again.status_code == 409
    assert again.json()["code"] == "INVALID_STATUS"

    batches = await records_of(stack.broker.bootstrap, "sms.batches", campaign.encode())
    outcomes = await records_of(stack.broker.bootstrap, "sms.outcomes", campaign.encode())
    assert len(batches) == 2
    assert len(outcomes) >= 4
    await republish(stack.broker.bootstrap, "sms.batches", batches)
    await republish(stack.broker.bootstrap, "sms.outcomes", outcomes)
    await eventually(lambda: caught_up(stack, CONSUMERS), what="every consumer past the redelivered events")

    after_sim = await api.sim("/sim/stats")
    assert after_sim["items_accepted"] == before_sim["items_accepted"]
    assert after_sim["requests"] == before_sim["requests"]
    sends = await api.sim(f"/sim/sends?campaign={campaign}")
    assert sends["max_per_phone"] == 1
    after_status = await api.status(key, campaign)
    assert after_status["stats"] == before_status["stats"]
    assert after_status["campaign"]["status"] == "completed"
