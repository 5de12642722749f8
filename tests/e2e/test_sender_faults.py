"""The sender under faults: the simulator answers with 429s, 500s, read timeouts and per-item rejections
while the sender process is killed with SIGKILL at random moments and restarted.

Afterwards nobody got a message twice (the simulator's per-phone count), every recipient is sent, failed or
listed as ambiguous by the operator endpoint, and the counts add up to the total, in the ledger and in the
events on sms.outcomes alike. Then the operator settles every ambiguous batch (resend when the simulator
shows it never got it, fail otherwise) and still nobody got a message twice.

The campaign's events are published as the enqueuer would publish them; only the sender and the simulator
run, so the test depends on nothing else. 10,000 recipients and one sender run in `make test`; 50,000
recipients and two sender replicas in one consumer group in `make chaos`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from deploy.local.stack import LocalStack, StackOptions
from shared.events import (
    BatchAmbiguous,
    BatchFailed,
    BatchQueued,
    BatchRecipient,
    BatchResolved,
    BatchSent,
    CampaignEnqueued,
    MessageType,
    RunKind,
    decode,
    encode,
    envelope_for,
)
from tests.support import caught_up, eventually, records_of, republish

FAULTS = {
    "latency_ms": "120",
    "reject_share": "0.01",  # every number divisible by 100
    "http_429_share": "0.2",
    "retry_after_seconds": "0",
    "http_500_share": "0.1",
    "http_500_after_accept": "false",  # refused before storing: what only the simulator can tell us
    "timeout_share": "0.1",  # stored, then no answer within the sender's read timeout
    "timeout_seconds": "2.5",
    "webhook_url": "",
}
SENDER_ENV = {
    "MITTO_READ_TIMEOUT_S": "1.0",
    "MAX_CONCURRENT_BULK_CALLS": "4",
    "BATCHES_PER_POLL": "8",
    "MAX_ATTEMPTS": "12",
    "BACKOFF_BASE_S": "0.05",
    "BACKOFF_MAX_S": "0.5",
}


@pytest.fixture
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[LocalStack]:
    """Sender replicas: `request.param` (indirect parametrisation), one by default. The simulator's faults
    are drawn from a seed of the test's name: different for each test, the same on every run."""
    seed = str(sum(map(ord, request.node.name)))
    replicas = int(getattr(request, "param", 1))
    options = StackOptions(
        services=("sender",),
        sim={**FAULTS, "seed": seed},
        env={"sender": SENDER_ENV},
        replicas={"sender": replicas},
    )
    s = LocalStack(options)
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


def batches_of(campaign: str, run: str, numbers: list[str], size: int) -> list[tuple[bytes | None, bytes]]:
    at = datetime.now(UTC)
    out: list[tuple[bytes | None, bytes]] = []
    for index, start in enumerate(range(0, len(numbers), size)):
        batch = BatchQueued(
            batch_id=f"{campaign}:{run}:{index}",
            run_token=run,
            batch_no=index,
            sender_id="Shop",
            template="Hi {{first_name}}, 20% off today!",
            message_type=MessageType.MARKETING,
            recipients=tuple(
                BatchRecipient(id=start + i + 1, phone=p, values={"first_name": f"Guest{start + i}"})
                for i, p in enumerate(numbers[start : start + size])
            ),
        )
        envelope = envelope_for(batch, occurred_at=at, tenant_id="tenant-faults", campaign_id=campaign)
        out.append((campaign.encode(), encode(envelope)))
    return out


async def ledger_counts(stack: LocalStack, campaign: str) -> Counter[str]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM sender.recipient_outcomes WHERE campaign_id = $1 GROUP BY 1",
            campaign,
        )
        return Counter({r["status"]: r["n"] for r in rows})
    finally:
        await conn.close()


async def batches_finished(stack: LocalStack, campaign: str) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM sender.send_batches WHERE campaign_id = $1 AND status <> 'claimed'",
                campaign,
            )
        )
    finally:
        await conn.close()


async def _at_least(stack: LocalStack, campaign: str, done: float) -> bool:
    return await batches_finished(stack, campaign) >= done


async def states_from_events(stack: LocalStack, campaign: str) -> dict[int, str]:
    """Each recipient's state as a consumer of sms.outcomes sees it: the first outcome of each batch, then
    every resolution."""
    state: dict[int, str] = {}
    first_seen: set[str] = set()
    for _, raw in await records_of(stack.broker.bootstrap, "sms.outcomes", campaign.encode()):
        _, event = decode(raw)
        if isinstance(event, BatchSent | BatchFailed | BatchAmbiguous):
            if event.batch_id in first_seen:
                continue
            first_seen.add(event.batch_id)
        if isinstance(event, BatchSent | BatchResolved):
            for r in event.results:
                if r.duplicate_of is None:
                    state[r.id] = "accepted" if r.message_id else "failed"
        elif isinstance(event, BatchFailed):
            state.update(dict.fromkeys(event.recipient_ids, "failed"))
        elif isinstance(event, BatchAmbiguous):
            state.update(dict.fromkeys(event.recipient_ids, "ambiguous"))
    return state


async def run_campaign_under_faults(
    stack: LocalStack, total: int, batch_size: int, kills: int, seed: int
) -> None:
    rng = random.Random(seed)
    campaign, run = str(uuid.uuid4()), "run-faults"
    numbers = [f"+30695{n:07d}" for n in range(total)]
    batches = batches_of(campaign, run, numbers, batch_size)
    enqueued = CampaignEnqueued(
        run_token=run,
        run_kind=RunKind.INITIAL,
        total=total,
        campaign_total=total,
        batch_count=len(batches),
        batch_size=batch_size,
        credits_reserved=total,
        started_at=datetime.now(UTC),
    )
    start = envelope_for(
        enqueued, occurred_at=datetime.now(UTC), tenant_id="tenant-faults", campaign_id=campaign
    )
    await republish(stack.broker.bootstrap, "campaign.events", [(campaign.encode(), encode(start))])
    await republish(stack.broker.bootstrap, "sms.batches", batches)

    # Kill points at random fractions of the campaign, each a random instant after that much is done: every
    # kill lands while batches are still to be sent, wherever the sender happens to be.
    for fraction in sorted(rng.uniform(0.05, 0.9) for _ in range(kills)):
        await eventually(
            lambda f=fraction: _at_least(stack, campaign, f * len(batches)),
            timeout=240,
            every=0.05,
            what="progress",
        )
        await asyncio.sleep(rng.uniform(0.0, 0.4))
        replica = rng.randrange(len(stack.replicas["sender"]))
        stack.kill("sender", replica=replica)  # SIGKILL: no graceful shutdown, whatever it was doing
        await stack.restart("sender", replica=replica)

    await eventually(
        lambda: caught_up(stack, {("sender", "sender"): ["sms.batches"]}), timeout=240, what="sender done"
    )

    async with httpx.AsyncClient(timeout=60) as http:
        sim = stack.url("mitto-sim")
        sends = (await http.get(f"{sim}/sim/sends", params={"campaign": campaign})).json()
        assert sends["max_per_phone"] <= 1, sends["duplicates"]
        stats = (await http.get(f"{sim}/sim/stats")).json()
        assert stats["injected_429"] > 0, stats
        assert stats["injected_500"] > 0, stats
        assert stats["injected_timeouts"] > 0, stats

        counts = await ledger_counts(stack, campaign)
        print(f"\nfaults: {stats}\nledger after {kills} kills: {dict(counts)}")
        assert set(counts) <= {"accepted", "rejected", "ambiguous"}, counts
        assert sum(counts.values()) == total
        assert stats["items_rejected"] > 0, stats

        operator = {"X-Api-Key": stack.operator_key}
        listed = (
            await http.get(
                f"{stack.url('sender')}/api/operator/ambiguous-batches",
                params={"limit": 1000},
                headers=operator,
            )
        ).json()
        ambiguous = [b for b in listed["items"] if b["campaignId"] == campaign]
        assert sum(b["recipients"] for b in ambiguous) == counts["ambiguous"]
        # What the simulator stored is what was accepted, plus whatever of the ambiguous batches got through.
        assert counts["accepted"] <= sends["sends"] <= counts["accepted"] + counts["ambiguous"]

        events_view = Counter((await states_from_events(stack, campaign)).values())
        assert sum(events_view.values()) == total
        assert (events_view["accepted"], events_view["failed"], events_view["ambiguous"]) == (
            counts["accepted"],
            counts["rejected"],
            counts["ambiguous"],
        )

        # The operator settles each ambiguous batch: resend what the provider provably never got, fail the rest.
        for b in ambiguous:
            detail = (
                await http.get(
                    f"{stack.url('sender')}/api/operator/ambiguous-batches/{b['batchId']}", headers=operator
                )
            ).json()
            probe = next(m["phone"] for m in detail["members"] if int(m["phone"][1:]) % 100)
            got = (await http.get(f"{sim}/sim/sends/{campaign}/{probe}")).json()["count"]
            action = "fail" if got else "resend"
            done = await http.post(
                f"{stack.url('sender')}/api/operator/ambiguous-batches/{b['batchId']}/resolve",
                json={"action": action},
                headers=operator,
            )
            assert done.status_code == 200, done.text
            assert done.json()["stillAmbiguous"] == 0 or action == "resend"

        after = await ledger_counts(stack, campaign)
        final = (await http.get(f"{sim}/sim/sends", params={"campaign": campaign})).json()
        assert final["max_per_phone"] <= 1, final["duplicates"]
        assert sum(after.values()) == total
        assert (
            after["accepted"] <= final["sends"] <= after["accepted"] + after["abandoned"] + after["ambiguous"]
        )


async def test_ten_thousand_recipients_through_faults_and_kills_are_each_sent_at_most_once(
    stack: LocalStack,
) -> None:
    await run_campaign_under_faults(stack, total=10_000, batch_size=250, kills=3, seed=4)


@pytest.mark.chaos
@pytest.mark.parametrize("stack", [2], indirect=True)  # two replicas share the partitions; either is killed
async def test_fifty_thousand_recipients_through_faults_and_kills_are_each_sent_at_most_once(
    stack: LocalStack,
) -> None:
    await run_campaign_under_faults(stack, total=50_000, batch_size=1_000, kills=6, seed=50)
