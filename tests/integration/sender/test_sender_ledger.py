"""The send ledger on real PostgreSQL against the Mitto simulator: claim before the call, the error policy,
redelivery, duplicates, pause/cancel, replicas racing for one batch, and ambiguous batches resolved."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sender import ledger as ledger_tx
from sender import store
from sender.resolution import ResolutionRefused

from shared.events import BatchAmbiguous, BatchDeferred, BatchFailed, BatchResolved, BatchSent
from tests.integration.sender.sender_builders import (
    SIM_KEY,
    Ledger,
    ScriptedTransport,
    a_batch,
    ledger,
    new_campaign,
    phones,
)
from tests.support import eventually


@pytest.fixture(scope="module")
async def lg() -> AsyncIterator[Ledger]:
    async with ledger("ledger") as harness:
        yield harness


@pytest.fixture(autouse=True)
async def quiet_sim(lg: Ledger) -> None:
    await lg.sim_config(
        latency_ms=0, reject_share=0.0, http_429_share=0.0, http_500_share=0.0, timeout_share=0.0
    )


async def sim_count(lg: Ledger, campaign: str) -> dict[str, int]:
    body = await lg.sim_get(f"/sim/sends?campaign={campaign}")
    return {"phones": body["phones"], "sends": body["sends"], "max": body["max_per_phone"]}


async def test_a_batch_is_sent_once_and_its_redelivery_repeats_the_recorded_outcome(lg: Ledger) -> None:
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(0, 50))

    assert await sender.handle(cause, batch, raw) == "sent"
    requests_after_first = (await lg.sim_get("/sim/stats"))["requests"]
    assert await sender.handle(cause, batch, raw) == "repeated"

    assert (await lg.sim_get("/sim/stats"))["requests"] == requests_after_first
    assert await sim_count(lg, campaign) == {"phones": 50, "sends": 50, "max": 1}
    events = await lg.outcomes(campaign)
    assert [t for t, _, _ in events] == ["BatchClaimed", "BatchSent", "BatchSent"]
    assert events[1][2] == events[2][2]  # the same event, re-emitted
    sent = events[1][1]
    assert isinstance(sent, BatchSent)
    assert sent.bulk_id
    assert [r.id for r in sent.results] == [r.id for r in batch.recipients]
    assert all(r.message_id and r.parts == 1 and r.error is None for r in sent.results)
    row = await lg.batch_row(batch.batch_id)
    assert (row["status"], row["bulk_id"]) == ("sent", sent.bulk_id)


async def test_per_item_rejections_fail_only_their_recipients(lg: Ledger) -> None:
    await lg.sim_config(reject_share=0.1)  # every number divisible by 10 is refused
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(100, 30))

    assert await sender.handle(cause, batch, raw) == "sent"

    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    refused = [r for r in sent.results if r.message_id is None]
    assert [r.phone for r in refused] == [p for p in phones(100, 30) if int(p[1:]) % 10 == 0]
    assert all(r.error == "destination rejected" for r in refused)
    assert sum(r.message_id is not None for r in sent.results) == 27
    async with lg.pool.acquire() as conn:
        statuses = await conn.fetch(
            "SELECT status, count(*) FROM recipient_outcomes WHERE campaign_id = $1 GROUP BY 1 ORDER BY 1",
            campaign,
        )
    assert [(r["status"], r["count"]) for r in statuses] == [("accepted", 27), ("rejected", 3)]


async def test_429_and_refused_connections_are_retried_and_counted(lg: Ledger) -> None:
    transport = ScriptedTransport([429, "refused", 429, None])
    sender, _, metrics = lg.sender(transport=transport)
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(200, 10))

    assert await sender.handle(cause, batch, raw) == "sent"

    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    assert sent.retry_count == 3
    assert sorted(metrics.retries) == ["429", "429", "unreachable"]
    assert await sim_count(lg, campaign) == {"phones": 10, "sends": 10, "max": 1}


async def test_retries_that_run_out_fail_the_batch_and_its_phones_can_be_claimed_again(lg: Ledger) -> None:
    sender, _, _ = lg.sender(lg.settings(max_attempts=2), transport=ScriptedTransport(["refused", "refused"]))
    campaign = new_campaign()
    numbers = phones(300, 5)
    cause, batch, raw = a_batch(campaign, numbers)

    assert await sender.handle(cause, batch, raw) == "failed"
    failed = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(failed, BatchFailed)
    assert failed.retry_count == 1
    assert failed.error.startswith("provider unreachable")

    retry_sender, _, _ = lg.sender()
    cause2, batch2, raw2 = a_batch(campaign, numbers, run_token="run-2", first_id=1)
    assert await retry_sender.handle(cause2, batch2, raw2) == "sent"
    assert await sim_count(lg, campaign) == {"phones": 5, "sends": 5, "max": 1}


async def test_a_4xx_fails_the_batch_with_the_providers_error(lg: Ledger) -> None:
    sender, _, _ = lg.sender(lg.settings(mitto_api_key="wrong-key"))
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(400, 5))

    assert await sender.handle(cause, batch, raw) == "failed"

    failed = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(failed, BatchFailed)
    assert failed.error == "provider refused (401): invalid or missing X-Mitto-API-Key"
    assert failed.retry_count == 0


@pytest.mark.parametrize("fault", ["accepted-then-500", "accepted-then-timeout"])
async def test_a_call_the_provider_may_have_taken_is_ambiguous_and_never_resent(
    lg: Ledger, fault: str
) -> None:
    transport = ScriptedTransport([fault])
    sender, _, _ = lg.sender(transport=transport)
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(500, 8))

    assert await sender.handle(cause, batch, raw) == "ambiguous"
    assert await sender.handle(cause, batch, raw) == "repeated"

    assert transport.sends == 1
    assert await sim_count(lg, campaign) == {"phones": 8, "sends": 8, "max": 1}
    types = [t for t, _, _ in await lg.outcomes(campaign)]
    assert types == ["BatchClaimed", "BatchAmbiguous", "BatchAmbiguous"]
    row = await lg.batch_row(batch.batch_id)
    assert (row["status"], row["remaining"]) == ("ambiguous", 8)
    assert row["batch_event"] is not None


async def test_a_read_timeout_against_a_slow_provider_is_ambiguous(lg: Ledger) -> None:
    await lg.sim_config(timeout_share=1.0, timeout_seconds=3.0)
    sender, _, _ = lg.sender(lg.settings(mitto_read_timeout_s=0.5))
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(600, 4))

    assert await sender.handle(cause, batch, raw) == "ambiguous"
    ambiguous = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(ambiguous, BatchAmbiguous)
    assert ambiguous.reason == "ReadTimeout after the request was sent"


async def test_a_batch_claimed_by_a_process_that_died_is_ambiguous_on_redelivery(lg: Ledger) -> None:
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(700, 6))
    async with lg.pool.acquire() as conn, conn.transaction():  # what a crashed process left behind
        claim = await store.claim_batch(
            conn, batch.batch_id, campaign, "run-1", "tenant-1", 6, datetime.now(UTC)
        )
        assert claim.existing is None
        assert await store.claim_recipients(conn, campaign, batch.batch_id, batch.recipients) == {}

    assert await sender.handle(cause, batch, raw) == "ambiguous"

    assert await sim_count(lg, campaign) == {"phones": 0, "sends": 0, "max": 0}
    ambiguous = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(ambiguous, BatchAmbiguous)
    assert ambiguous.reason == ledger_tx.INTERRUPTED
    assert list(ambiguous.recipient_ids) == [r.id for r in batch.recipients]


async def test_a_phone_handed_over_by_another_batch_is_suppressed(lg: Ledger) -> None:
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    first = a_batch(campaign, phones(800, 5), index=0, first_id=1)
    second = a_batch(campaign, phones(803, 5), index=1, first_id=100)  # two phones in common

    assert await sender.handle(*first) == "sent"
    assert await sender.handle(*second) == "sent"

    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    dups = [r for r in sent.results if r.duplicate_of]
    assert [(r.id, r.duplicate_of) for r in dups] == [(100, first[1].batch_id), (101, first[1].batch_id)]
    assert await sim_count(lg, campaign) == {"phones": 8, "sends": 8, "max": 1}


async def test_paused_and_cancelled_runs_are_deferred_without_a_call(lg: Ledger) -> None:
    sender, _, _ = lg.sender()
    cases = {
        "paused": ("paused", "run-1"),
        "cancelled": ("cancelled", "run-1"),
    }
    for expected, (status, run_token) in cases.items():
        campaign = new_campaign()
        async with lg.pool.acquire() as conn:
            await store.save_control(conn, campaign, status, run_token)
        assert await sender.handle(*a_batch(campaign, phones(900, 3))) == "deferred"
        deferred = (await lg.outcomes(campaign))[-1][1]
        assert isinstance(deferred, BatchDeferred)
        assert deferred.reason == expected
        assert await sim_count(lg, campaign) == {"phones": 0, "sends": 0, "max": 0}


async def test_a_new_runs_batch_arriving_before_its_run_is_known_is_sent(lg: Ledger) -> None:
    """Retry-failed and resume runs get new tokens; their batches may overtake their CampaignEnqueued."""
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    async with lg.pool.acquire() as conn:
        await store.save_control(conn, campaign, "finished", "run-0")
    assert await sender.handle(*a_batch(campaign, phones(950, 3))) == "sent"
    assert await sim_count(lg, campaign) == {"phones": 3, "sends": 3, "max": 1}


async def test_two_replicas_getting_the_same_batch_call_the_provider_once(lg: Ledger) -> None:
    await lg.sim_config(latency_ms=400)
    one, _, _ = lg.sender()
    other, _, _ = lg.sender()  # its own lock connection: another process as far as PostgreSQL knows
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(1000, 20))

    results = await asyncio.gather(one.handle(cause, batch, raw), other.handle(cause, batch, raw))

    assert sorted(results) == ["repeated", "sent"]
    assert (await lg.sim_get(f"/sim/sends?campaign={campaign}"))["sends"] == 20
    assert [t for t, _, _ in await lg.outcomes(campaign)] == ["BatchClaimed", "BatchSent", "BatchSent"]


async def test_an_answer_arriving_after_the_batch_was_declared_ambiguous_resolves_it(lg: Ledger) -> None:
    await lg.sim_config(latency_ms=1500)  # room to declare it ambiguous while the call is in flight
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(1100, 5))
    sending = asyncio.create_task(sender.handle(cause, batch, raw))

    async def claimed() -> bool:
        async with lg.pool.acquire() as conn:
            return (
                await conn.fetchval("SELECT status FROM send_batches WHERE batch_id = $1", batch.batch_id)
                == "claimed"
            )

    await eventually(claimed, timeout=30, every=0.02, what="the batch claimed")
    async with (
        lg.pool.acquire() as conn,
        conn.transaction(),
    ):  # as a replica that saw this process's lock vanish
        await ledger_tx.declare_interrupted(conn, cause, batch, raw, ledger_tx.INTERRUPTED, datetime.now(UTC))

    assert await sending == "resolved"
    events = await lg.outcomes(campaign)
    assert [t for t, _, _ in events] == ["BatchClaimed", "BatchAmbiguous", "BatchResolved"]
    resolved = events[-1][1]
    assert isinstance(resolved, BatchResolved)
    assert (resolved.resolution, resolved.remaining, len(resolved.results)) == ("provider_answer", 0, 5)
    assert all(r.message_id for r in resolved.results)
    assert (await lg.batch_row(batch.batch_id))["status"] == "resolved"


async def test_operator_resend_sends_the_remaining_recipients_once(lg: Ledger) -> None:
    transport = ScriptedTransport([500])  # refused before acceptance, though the sender cannot know it
    sender, resolver, _ = lg.sender(transport=transport)
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(1200, 12))
    assert await sender.handle(cause, batch, raw) == "ambiguous"
    assert [b.batch_id for b in await resolver.list_batches() if b.campaign_id == campaign] == [
        batch.batch_id
    ]
    assert [r.id for r in (await resolver.detail(batch.batch_id)).recipients] == [
        r.id for r in batch.recipients
    ]

    done = await resolver.resolve(batch.batch_id, "resend")

    assert (done.accepted, done.failed, done.still_ambiguous) == (12, 0, 0)
    with pytest.raises(ResolutionRefused) as again:
        await resolver.resolve(batch.batch_id, "resend")
    assert again.value.code == "NOT_AMBIGUOUS"
    assert await sim_count(lg, campaign) == {"phones": 12, "sends": 12, "max": 1}
    resolved = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(resolved, BatchResolved)
    assert resolved.resolution == "operator_resend"
    assert all(r.message_id for r in resolved.results)


async def test_operator_fail_abandons_the_recipients_for_good(lg: Ledger) -> None:
    sender, resolver, _ = lg.sender(transport=ScriptedTransport(["accepted-then-timeout"]))
    campaign = new_campaign()
    numbers = phones(1300, 4)
    assert await sender.handle(*a_batch(campaign, numbers)) == "ambiguous"

    done = await resolver.resolve(f"{campaign}:run-1:0", "fail")

    assert (done.accepted, done.failed, done.still_ambiguous) == (0, 4, 0)
    resolved = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(resolved, BatchResolved)
    assert resolved.resolution == "operator_fail"
    assert all(r.message_id is None and r.error for r in resolved.results)
    later, _, _ = lg.sender()  # a retry-failed run with the same phones hands none of them over
    assert await later.handle(*a_batch(campaign, numbers, run_token="run-2")) == "sent"
    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    assert all(r.duplicate_of == f"{campaign}:run-1:0" for r in sent.results)
    assert await sim_count(lg, campaign) == {"phones": 4, "sends": 4, "max": 1}  # the first, ambiguous call


async def test_message_ids_of_an_unmatchable_answer_are_resolved_by_status_lookup(lg: Ledger) -> None:
    sender, resolver, _ = lg.sender(transport=ScriptedTransport(["drop-last-result"]))
    campaign = new_campaign()
    cause, batch, raw = a_batch(campaign, phones(1400, 6))
    assert await sender.handle(cause, batch, raw) == "ambiguous"
    assert (await lg.batch_row(batch.batch_id))["remaining"] == 6

    assert await resolver.look_up_known_ids() == 5

    resolved = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(resolved, BatchResolved)
    assert (resolved.resolution, resolved.remaining) == ("status_lookup", 1)
    assert sorted(r.id for r in resolved.results) == [r.id for r in batch.recipients[:5]]
    left = (await resolver.detail(batch.batch_id)).recipients
    assert [r.id for r in left] == [batch.recipients[5].id]


async def test_the_message_rate_of_a_traffic_account_is_held(lg: Ledger) -> None:
    sender, _, _ = lg.sender(lg.settings(mitto_messages_per_second=1000, mitto_burst_seconds=0.1))
    campaign = new_campaign()
    batches = [
        a_batch(campaign, phones(2000 + 500 * i, 500), index=i, first_id=1 + 500 * i) for i in range(4)
    ]

    started = time.monotonic()
    assert await asyncio.gather(*(sender.handle(*b) for b in batches)) == ["sent"] * 4

    # 500 messages a call at 1,000/s: each call waits for the previous one's 0.5 s (the bucket of 100
    # cannot cover it), so the fourth starts 1.5 s after the first, however fast the machine is.
    assert time.monotonic() - started >= 1.45


async def test_a_batch_of_duplicates_only_makes_no_call(lg: Ledger) -> None:
    transport = ScriptedTransport()
    sender, _, _ = lg.sender(transport=transport)
    campaign = new_campaign()
    numbers = phones(3000, 3)
    assert await sender.handle(*a_batch(campaign, numbers, index=0)) == "sent"
    assert await sender.handle(*a_batch(campaign, numbers, index=1, first_id=50)) == "sent"
    assert transport.sends == 1
    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    assert all(r.duplicate_of for r in sent.results)


async def test_a_batch_of_one_goes_through_the_single_send_endpoint(lg: Ledger) -> None:
    sender, _, _ = lg.sender()
    campaign = new_campaign()
    assert await sender.handle(*a_batch(campaign, phones(4000, 1))) == "sent"
    sent = (await lg.outcomes(campaign))[-1][1]
    assert isinstance(sent, BatchSent)
    assert sent.bulk_id is None  # the single-send answer has no bulk id
    assert sent.results[0].message_id
    metrics = (await lg.sim.get("/metrics")).text
    assert 'endpoint="single",status="200"' in metrics


async def run_cli(lg: Ledger, *args: str) -> tuple[int, Any]:
    env = {**os.environ, "DATABASE_URL": lg.url, "MITTO_BASE_URL": lg.sim_url, "MITTO_API_KEY": SIM_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sender", "ambiguous", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, orjson.loads(out if proc.returncode == 0 else err)


async def test_the_command_line_lists_shows_and_resolves_ambiguous_batches(lg: Ledger) -> None:
    sender, _, _ = lg.sender(transport=ScriptedTransport([503]))
    campaign = new_campaign()
    _, batch, _ = a_batch(campaign, phones(4100, 3))
    assert await sender.handle(*a_batch(campaign, phones(4100, 3))) == "ambiguous"

    code, listed = await run_cli(lg, "list", "--limit", "1000")
    assert code == 0
    assert [b["recipients"] for b in listed if b["batchId"] == batch.batch_id] == [3]
    code, shown = await run_cli(lg, "show", batch.batch_id)
    assert (code, [m["phone"] for m in shown["members"]]) == (0, phones(4100, 3))
    code, done = await run_cli(lg, "resend", batch.batch_id)
    assert (code, done["accepted"], done["stillAmbiguous"]) == (0, 3, 0)
    code, refused = await run_cli(lg, "fail", batch.batch_id)
    assert (code, refused["code"]) == (2, "NOT_AMBIGUOUS")
    assert await sim_count(lg, campaign) == {"phones": 3, "sends": 3, "max": 1}
