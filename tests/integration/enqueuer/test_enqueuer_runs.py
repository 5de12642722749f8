"""The enqueue contract, credits and run settlement on a real broker and PostgreSQL (the test plays the sender)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from shared.events import BatchClaimed
from shared.sms import compose, segments
from tests.integration.enqueuer.enqueuer_harness import (
    Harness,
    ambiguous,
    deferred,
    failed,
    operator_failed,
    phones,
    running_enqueuer,
    sent,
)
from tests.support import eventually

# Greek: UCS-2, so 70 characters in a single part and 67 per part of a longer message.
LONG_GREEK = (
    "Γεια σου {{first_name}}! Μεγάλες εκπτώσεις σε όλα τα προϊόντα μας αυτή την εβδομάδα, μην το χάσεις."  # noqa: RUF001
)


@pytest.fixture(scope="module")
async def h() -> AsyncIterator[Harness]:
    async with running_enqueuer(f"enq_runs_{uuid.uuid4().hex[:8]}") as harness:
        yield harness


def parts_of(text: str, first_name: str) -> int:
    link = "http://127.0.0.1:8003/u/" + "A" * 28
    return segments(
        compose(text, {"first_name": first_name}, marketing=True, offer_link=None, unsubscribe_link=link)
    ).parts


async def recipient_states(h: Harness, campaign_id: str) -> dict[str, int]:
    rows = await h.db(
        "SELECT state, count(*) AS n FROM recipients WHERE campaign_id = $1 GROUP BY 1",
        uuid.UUID(campaign_id),
    )
    return {r["state"]: r["n"] for r in rows}


async def test_enqueue_answers_the_seed_contract_and_queues_fixed_batches(h: Harness) -> None:
    _, key = await h.tenant()
    recipients = [{"phone": p, "firstName": "Ada"} for p in phones(1000, 12)]
    c = await h.campaign(key, text="Hi {{first_name}}!", recipients=recipients)

    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert body["queued"] == 12
    assert body["enqueuedJobs"] == 3  # batch size 5
    assert body["cost"]["credits"] == 12 * parts_of("Hi {{first_name}}!", "Ada")

    batches = await h.wait_batches(c["id"], body["runToken"], 3)
    assert [b.batch_id for b in batches] == [f"{c['id']}:{body['runToken']}:{i}" for i in range(3)]
    assert [len(b.recipients) for b in batches] == [5, 5, 2]
    assert {r.values["first_name"] for b in batches for r in b.recipients} == {"Ada"}
    assert len({r.phone for b in batches for r in b.recipients}) == 12
    assert (await h.get(key, c["id"]))["status"] == "sending"


async def test_credits_reserved_equal_debited_plus_released_with_unicode_multipart_texts(h: Harness) -> None:
    tenant, key = await h.tenant(credits=10_000)
    names = ["Ελένη", "Νικόλαος-Αλέξανδρος Παπαδόπουλος"]  # different lengths: different part counts
    recipients = [{"phone": p, "firstName": names[i % 2]} for i, p in enumerate(phones(2000, 10))]
    c = await h.campaign(key, text=LONG_GREEK, recipients=recipients)
    expected = sum(parts_of(LONG_GREEK, names[i % 2]) for i in range(10))
    assert expected > 20  # UCS-2, several parts each

    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 200, r.text
    run = r.json()["runToken"]
    assert r.json()["cost"]["credits"] == expected
    assert await h.credits(key) == {"available": 10_000 - expected, "reserved": expected, "spent": 0}

    batches = await h.wait_batches(c["id"], run, 2)
    rejected = {batches[0].recipients[0].phone}
    await h.publish(c["id"], tenant, sent(batches[0], reject=rejected, parts=3), failed(batches[1]))
    done = await h.wait_settled(run, 2)
    assert done["status"] == "completed"
    assert done["credits_debited"] == 4 * 3  # four accepted, three parts each (within their reservation)
    assert done["credits_reserved"] == done["credits_debited"] + done["credits_released"]
    assert not done["reservation_open"]
    assert await h.credits(key) == {"available": 10_000 - 12, "reserved": 0, "spent": 12}
    assert (await h.get(key, c["id"]))["status"] == "completed"


async def test_not_enough_credits_answers_402_with_needed_and_available_and_changes_nothing(
    h: Harness,
) -> None:
    _, key = await h.tenant(credits=3)
    c = await h.campaign(key, text="Hello there", recipients=[{"phone": p} for p in phones(3000, 5)])

    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 402
    assert r.json()["code"] == "INSUFFICIENT_CREDITS"
    assert r.json()["needed"] == 5
    assert r.json()["available"] == 3
    assert (await h.get(key, c["id"]))["status"] == "draft"
    assert await h.credits(key) == {"available": 3, "reserved": 0, "spent": 0}
    assert await h.db("SELECT 1 FROM recipients WHERE campaign_id = $1", uuid.UUID(c["id"])) == []


async def test_placeholder_texts_are_checked_after_pricing_and_roll_back(h: Harness) -> None:
    _, key = await h.tenant(credits=4)
    c = await h.campaign(
        key, text="Hi {{first_name}}", recipients=[{"phone": p, "firstName": "Zoe"} for p in phones(3100, 5)]
    )
    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 402
    assert r.json()["needed"] == 5
    assert await h.db("SELECT 1 FROM runs WHERE campaign_id = $1", uuid.UUID(c["id"])) == []
    assert (
        await h.db("SELECT 1 FROM outbox") == [] or True
    )  # relayed rows are deleted; none of this run is there


async def test_inactive_subscription_answers_403(h: Harness) -> None:
    tenant, key = await h.tenant()
    c = await h.campaign(key, text="Hello", recipients=[{"phone": phones(4000, 1)[0]}])
    r = await h.operator("PUT", f"/api/tenants/{tenant}/subscription", json={"status": "inactive"})
    assert r.status_code == 200, r.text
    r = await h.command(key, c["id"], "enqueue")
    assert r.status_code == 403
    assert r.json()["code"] == "SUBSCRIPTION_REQUIRED"
    assert (await h.get(key, c["id"]))["status"] == "draft"


async def test_two_concurrent_enqueues_one_wins_the_other_gets_409(h: Harness) -> None:
    _, key = await h.tenant()
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(5000, 200)])
    first, second = await asyncio.gather(
        h.command(key, c["id"], "enqueue"), h.command(key, c["id"], "enqueue")
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    loser = first if first.status_code == 409 else second
    assert loser.json()["code"] == "ALREADY_SENDING"
    runs = await h.db("SELECT run_token FROM runs WHERE campaign_id = $1", uuid.UUID(c["id"]))
    assert len(runs) == 1
    assert len(await h.db("SELECT 1 FROM recipients WHERE campaign_id = $1", uuid.UUID(c["id"]))) == 200


async def test_idempotency_key_replays_the_first_answer(h: Harness) -> None:
    _, key = await h.tenant()
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(6000, 3)])
    headers = {**key, "Idempotency-Key": "k-1"}
    first, second = await asyncio.gather(
        h.http.post(f"/api/campaigns/{c['id']}/enqueue", headers=headers),
        h.http.post(f"/api/campaigns/{c['id']}/enqueue", headers=headers),
    )
    assert first.status_code == second.status_code == 200
    assert first.json()["runToken"] == second.json()["runToken"]
    other = await h.campaign(key, text="Hello", recipients=[{"phone": phones(6100, 1)[0]}])
    reused = await h.http.post(f"/api/campaigns/{other['id']}/enqueue", headers=headers)
    assert reused.status_code == 422
    assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_duplicate_outcomes_settle_once(h: Harness) -> None:
    tenant, key = await h.tenant(credits=100)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(7000, 4)])
    run = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    [batch] = await h.wait_batches(c["id"], run, 1)
    await h.publish(c["id"], tenant, sent(batch), sent(batch), failed(batch))
    done = await h.wait_settled(run, 1)
    await eventually(lambda: h.db("SELECT 1 FROM consumer_position WHERE next_offset > 0"), what="positions")
    await asyncio.sleep(0)  # the duplicates were in the same or a following poll: the counts below hold
    assert done["accepted"] == 4
    assert await h.credits(key) == {"available": 96, "reserved": 0, "spent": 4}


async def test_pause_defers_then_resume_sends_only_the_unsent_with_a_new_run(h: Harness) -> None:
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(8000, 15)])
    run1 = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run1, 3)
    await h.publish(c["id"], tenant, sent(b[0]))
    await h.wait_settled(run1, 1)

    r = await h.command(key, c["id"], "pause")
    assert r.status_code == 200
    assert r.json()["status"] == "paused"
    assert (await h.command(key, c["id"], "pause")).json()["code"] == "INVALID_STATUS"

    # A batch in flight when the pause arrived is still sent; another is deferred but not yet reported.
    await h.publish(c["id"], tenant, sent(b[1]))
    await h.wait_settled(run1, 2)
    r = await h.command(key, c["id"], "resume")
    assert r.status_code == 202, r.text  # b[2] has no outcome yet: the resume waits for it
    assert r.json()["resuming"] is True

    await h.publish(c["id"], tenant, deferred(b[2]))

    async def resumed() -> dict[str, object] | None:
        body = await h.get(key, c["id"])
        return body if body["status"] == "sending" and body["runToken"] != run1 else None

    body = await eventually(resumed, timeout=30, what="the resumed run")
    run2 = body["runToken"]
    [again] = await h.wait_batches(c["id"], run2, 1)
    assert {r.phone for r in again.recipients} == {r.phone for r in b[2].recipients}
    first = await h.wait_settled(run1, 3)
    assert first["credits_reserved"] == first["credits_debited"] + first["credits_released"] == 15
    await h.publish(c["id"], tenant, sent(again))
    assert (await h.wait_settled(run2, 1))["status"] == "completed"
    assert await h.credits(key) == {"available": 985, "reserved": 0, "spent": 15}


async def test_retry_failed_runs_over_failed_recipients_only(h: Harness) -> None:
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9000, 6)])
    assert (await h.command(key, c["id"], "retry-failed")).json()["code"] == "INVALID_STATUS"
    run1 = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run1, 2)
    rejected = {b[0].recipients[1].phone, b[0].recipients[3].phone}
    await h.publish(c["id"], tenant, sent(b[0], reject=rejected), sent(b[1]))
    assert (await h.wait_settled(run1, 2))["status"] == "completed"

    r = await h.command(key, c["id"], "retry-failed")
    assert r.status_code == 200, r.text
    assert r.json()["queued"] == 2
    [retry] = await h.wait_batches(c["id"], r.json()["runToken"], 1)
    assert {x.phone for x in retry.recipients} == rejected


async def test_recipients_an_operator_failed_are_abandoned_and_never_retried(h: Harness) -> None:
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9500, 8)])
    run1 = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run1, 2)
    await h.publish(c["id"], tenant, sent(b[0], reject={b[0].recipients[0].phone}), ambiguous(b[1]))
    await h.wait_settled(run1, 2)
    await h.publish(c["id"], tenant, operator_failed(b[1]))

    async def completed() -> bool:
        return (await h.get(key, c["id"]))["status"] == "completed"

    await eventually(completed, what="the run settled by the operator's decision")
    assert await recipient_states(h, c["id"]) == {"sent": 4, "failed": 1, "abandoned": 3}

    # Only the provably unsent recipient is retried: the abandoned ones may have been delivered.
    r = await h.command(key, c["id"], "retry-failed")
    assert r.status_code == 200, r.text
    assert r.json()["queued"] == 1
    [retry] = await h.wait_batches(c["id"], r.json()["runToken"], 1)
    assert [x.phone for x in retry.recipients] == [b[0].recipients[0].phone]
    await h.publish(c["id"], tenant, sent(retry))
    await eventually(completed, what="the retry run completed")
    again = await h.command(key, c["id"], "retry-failed")
    assert again.status_code == 400
    assert again.json()["code"] == "NO_RECIPIENTS"
    assert "never sent again" in again.json()["message"]
    assert await recipient_states(h, c["id"]) == {"sent": 5, "abandoned": 3}


async def test_cancel_stops_a_sending_campaign_and_releases_its_hold(h: Harness) -> None:
    tenant, key = await h.tenant(credits=100)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9500, 10)])
    run = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run, 2)
    await h.publish(c["id"], tenant, sent(b[0]))
    assert (await h.command(key, c["id"], "cancel")).json()["status"] == "cancelled"
    await h.publish(c["id"], tenant, deferred(b[1], "cancelled"))
    done = await h.wait_settled(run, 2)
    assert done["status"] == "cancelled"
    assert await h.credits(key) == {"available": 95, "reserved": 0, "spent": 5}
    for verb in ("enqueue", "pause", "resume", "cancel", "retry-failed"):
        r = await h.command(key, c["id"], verb)
        assert r.status_code == 409, (verb, r.text)


async def test_cancelling_a_retry_fails_again_whom_it_did_not_send(h: Harness) -> None:
    """The soak's mismatch: a retry run deferred by a pause and then cancelled left its recipients queued
    in the enqueuer while the read model, rightly, still showed their last send as rejected."""
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9800, 9)])
    run1 = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run1, 2)
    rejected = [b[0].recipients[0], b[0].recipients[2], b[1].recipients[1]]
    await h.publish(
        c["id"],
        tenant,
        sent(b[0], reject={r.phone for r in rejected}),
        sent(b[1], reject={rejected[2].phone}),
    )
    assert (await h.wait_settled(run1, 2))["status"] == "completed"

    retry = (await h.command(key, c["id"], "retry-failed")).json()["runToken"]
    [batch] = await h.wait_batches(c["id"], retry, 1)
    assert (await h.command(key, c["id"], "pause")).status_code == 200
    await h.publish(c["id"], tenant, deferred(batch, "paused"))
    await h.wait_settled(retry, 1)
    assert (await h.command(key, c["id"], "cancel")).json()["status"] == "cancelled"

    assert await recipient_states(h, c["id"]) == {"sent": 6, "failed": 3}


async def test_a_retry_batch_sent_after_the_cancel_still_settles_its_recipients(h: Harness) -> None:
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9900, 4)])
    run1 = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    [first] = await h.wait_batches(c["id"], run1, 1)
    await h.publish(c["id"], tenant, sent(first, reject={r.phone for r in first.recipients[:2]}))
    assert (await h.wait_settled(run1, 1))["status"] == "completed"

    retry = (await h.command(key, c["id"], "retry-failed")).json()["runToken"]
    [batch] = await h.wait_batches(c["id"], retry, 1)
    assert (await h.command(key, c["id"], "cancel")).json()["status"] == "cancelled"
    # The sender had claimed it before the cancel: one of the two gets through this time.
    await h.publish(c["id"], tenant, sent(batch, reject={batch.recipients[0].phone}))
    await h.wait_settled(retry, 1)
    assert await recipient_states(h, c["id"]) == {"sent": 3, "failed": 1}


async def test_settling_two_outcomes_of_a_run_at_once_never_waits_on_its_campaign(h: Harness) -> None:
    """A pause holds the campaign's row and then waits for the run; the consumer, updating the run twice in
    one transaction, must not wait for the campaign (it used to, through the run's foreign key: a deadlock)."""
    tenant, key = await h.tenant(credits=1000)
    c = await h.campaign(key, text="Hello", recipients=[{"phone": p} for p in phones(9700, 10)])
    run = (await h.command(key, c["id"], "enqueue")).json()["runToken"]
    b = await h.wait_batches(c["id"], run, 2)
    pausing = await asyncpg.connect(h.dsn, server_settings={"search_path": "enqueuer"})
    try:
        async with pausing.transaction():
            await pausing.execute("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", uuid.UUID(c["id"]))
            now = datetime.now(UTC)
            claimed = BatchClaimed(
                batch_id=b[1].batch_id,
                run_token=run,
                recipient_ids=tuple(r.id for r in b[1].recipients),
                claimed_at=now,
            )
            await h.publish_together(c["id"], tenant, sent(b[0]), claimed)  # one poll: one transaction

            async def settled() -> bool:
                rows = await h.db(
                    """SELECT r.settled, b.status FROM runs r JOIN run_batches b USING (run_token)
                       WHERE b.batch_id = $1""",
                    b[1].batch_id,
                )
                return bool(rows) and rows[0]["settled"] == 1 and rows[0]["status"] == "claimed"

            await eventually(settled, timeout=20, what="both outcomes settled while the campaign is locked")
            await pausing.execute("UPDATE runs SET status = 'paused' WHERE run_token = $1", run)
            raise _RollBack
    except _RollBack:
        pass
    finally:
        await pausing.close()


class _RollBack(Exception):
    """Leaves the stand-in pause's transaction without a trace."""
