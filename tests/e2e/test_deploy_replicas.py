"""Two replicas of each consumer service share the partitions and survive a rebalance mid-campaign with no
loss and no duplicated effect.

Campaigns totalling 20,000 recipients run through two processes each of enqueuer, sender and projector on
the same consumer groups. Their keys cover at least four of the six partitions, so with the partitions split
three and three every replica holds work. Once both senders have sent, one replica of each service is
stopped: the sender by SIGTERM (it finishes the provider call in flight), the enqueuer and the projector by
SIGKILL (mid-transaction). The survivors take over the partitions, and the outcome must be exact.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner

from deploy.local.stack import LocalStack, StackOptions
from shared.topics import CONSUMERS, dead_letter_topic
from tests.support import Api, caught_up, end_offsets, eventually, greek_mobiles

PARTITIONS = 6
PER_CAMPAIGN = 2_500
CAMPAIGNS = 8
BATCH_SIZE = 500
REJECTED_PER_CAMPAIGN = PER_CAMPAIGN // 100  # reject_share 0.01 over consecutive numbers: exact
ACCEPTED_PER_CAMPAIGN = PER_CAMPAIGN - REJECTED_PER_CAMPAIGN
CONSUMER_TOPICS = {
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
    s = LocalStack(
        StackOptions(
            partitions=PARTITIONS,
            batch_size=BATCH_SIZE,
            replicas={"enqueuer": 2, "sender": 2, "projector": 2},
            # One bulk call at a time per sender, each taking a second: the campaign lasts long enough for a
            # rebalance to happen in the middle of it, and a SIGTERM waits for one call only.
            sim={
                "latency_ms": "1000",
                "reject_share": "0.01",
                "dlr_delay_ms": "500",
                "dlr_batch_size": "250",
            },
            env={"sender": {"MAX_CONCURRENT_BULK_CALLS": "1", "BATCHES_PER_POLL": "1"}},
        )
    )
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


def partition_of(campaign_id: str) -> int:
    """The partition the outbox relay's producer picks for the campaign's key (Kafka's murmur2)."""
    every = list(range(PARTITIONS))
    return int(DefaultPartitioner()(campaign_id.encode(), every, every))


async def counter(http: httpx.AsyncClient, url: str, metric: str) -> float:
    """Sum of a Prometheus counter over its labels, as one replica reports it."""
    text = (await http.get(f"{url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{metric}{{") or line.startswith(f"{metric} ")
    )


async def create_campaigns(api: Api) -> dict[str, str]:
    """Campaign id -> tenant key: at least CAMPAIGNS campaigns whose keys cover four partitions or more."""
    tenants = [
        await api.new_tenant("Retail owner", "retail"),
        await api.new_tenant("Shopify shop", "shopify"),
    ]
    campaigns: dict[str, str] = {}
    while len(campaigns) < CAMPAIGNS or len({partition_of(c) for c in campaigns}) < 4:
        assert len(campaigns) < 3 * CAMPAIGNS, "campaign ids keep hashing to three partitions or fewer"
        _, key = tenants[len(campaigns) % 2]
        phones = greek_mobiles(3_000_000 + 10_000 * len(campaigns), PER_CAMPAIGN)
        campaigns[await api.new_campaign(key, phones)] = key
    return campaigns


async def test_two_replicas_share_partitions_and_survive_a_rebalance_exactly(
    stack: LocalStack, api: Api
) -> None:
    campaigns = await create_campaigns(api)
    total = PER_CAMPAIGN * len(campaigns)
    enqueued = await asyncio.gather(*(api.enqueue(key, c) for c, key in campaigns.items()))
    assert [r.status_code for r in enqueued] == [200] * len(campaigns), [r.text for r in enqueued]
    assert sum(r.json()["queued"] for r in enqueued) == total

    senders = [stack.url("sender", i) for i in range(2)]

    async def both_senders_sent() -> list[float] | None:
        sent = [await counter(api.http, url, "sender_batches_total") for url in senders]
        return sent if all(n > 0 for n in sent) else None

    await eventually(both_senders_sent, timeout=120, every=0.2, what="both sender replicas sending")
    before = await api.sim("/sim/stats")
    assert before["items_accepted"] + before["items_rejected"] < total // 2, (
        "campaign nearly over before the kill"
    )

    await asyncio.gather(
        asyncio.to_thread(stack.kill, "sender", signal.SIGTERM, replica=1),
        asyncio.to_thread(stack.kill, "enqueuer", signal.SIGKILL, replica=1),
        asyncio.to_thread(stack.kill, "projector", signal.SIGKILL, replica=1),
    )
    assert [stack.alive(n) for n in ("sender", "enqueuer", "projector")] == [[0], [0], [0]]

    for campaign, key in campaigns.items():
        done = await api.wait_status(key, campaign, "completed", timeout=300)
        stats = done["stats"]
        assert stats["total"] == PER_CAMPAIGN
        assert stats["sent"] == ACCEPTED_PER_CAMPAIGN
        assert stats["failed"] == REJECTED_PER_CAMPAIGN
        assert stats["sent"] + stats["failed"] == stats["processed"] == PER_CAMPAIGN
        sends = await api.sim(f"/sim/sends?campaign={campaign}")
        assert sends["max_per_phone"] == 1, sends["duplicates"]
        assert sends["sends"] == sends["phones"] == ACCEPTED_PER_CAMPAIGN

    accepted = ACCEPTED_PER_CAMPAIGN * len(campaigns)
    sim = await api.sim("/sim/stats")
    assert sim["items_accepted"] == accepted  # no batch reached Mitto twice
    assert sim["items_rejected"] == REJECTED_PER_CAMPAIGN * len(campaigns)

    async def every_report_projected() -> int | None:
        delivered = [(await api.status(key, c))["stats"]["delivered"] for c, key in campaigns.items()]
        reported = (await api.sim("/sim/stats"))["reports_delivered"]
        return reported if sum(delivered) == reported == accepted else None

    await eventually(every_report_projected, timeout=180, what="every acknowledged report projected once")
    await eventually(
        lambda: caught_up(stack, CONSUMER_TOPICS), what="survivors past the end of every partition"
    )

    dead = await end_offsets(stack.broker.bootstrap, [dead_letter_topic(c) for c in CONSUMERS])
    assert sum(dead.values()) == 0, {tp: n for tp, n in dead.items() if n}
