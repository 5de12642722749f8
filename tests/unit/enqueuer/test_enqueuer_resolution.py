"""Ambiguous batches resolved later (BatchResolved): partial steps, duplicates, run completion, credits."""

from __future__ import annotations

from datetime import UTC, datetime

from enqueuer.domain import (
    BatchOutcome,
    PlannedBatch,
    Run,
    batch_status_after,
    failed_state,
    resolution_outcome,
    settle_batch,
)

from shared.events import BatchResolved, CampaignCompleted, CreditsDebited, CreditsReleased, RecipientResult

AT = datetime(2026, 11, 25, tzinfo=UTC)


def resolved(results: list[tuple[int, str | None]], remaining: int) -> BatchResolved:
    return BatchResolved(
        batch_id="c1:r1:1",
        run_token="r1",
        resolution="operator_fail" if all(m is None for _, m in results) else "status_lookup",
        results=tuple(
            RecipientResult(
                id=i,
                phone=f"+30694{i:07d}",
                message_id=m,
                parts=2 if m else 1,
                error=None if m else "declared failed",
            )
            for i, m in results
        ),
        remaining=remaining,
        resolved_at=AT,
    )


def a_run_with_an_ambiguous_batch() -> tuple[Run, PlannedBatch]:
    # batch 0 (ids 1-4) sent, all accepted, 1 part each; batch 1 (ids 5-10) ambiguous; 2 credits each reserved.
    run = Run(
        "r1",
        "c1",
        total=10,
        batch_count=2,
        settled=2,
        accepted=4,
        ambiguous=6,
        credits_reserved=20,
        credits_debited=4,
        reservation_open=True,
    )
    return run, PlannedBatch("ambiguous", cost=12, ambiguous=6)


def test_a_partial_resolution_counts_what_became_known_and_keeps_the_run_open() -> None:
    run, batch = a_run_with_an_ambiguous_batch()
    outcome = resolution_outcome(
        resolved([(5, "m5"), (6, "m6"), (7, None)], remaining=3), {5, 6, 7, 8, 9, 10}
    )
    s = settle_batch(run, batch, outcome, campaign_accepted_before=0, credits_available=0, at=AT)
    assert s is not None
    assert (s.run.accepted, s.run.failed, s.run.ambiguous) == (6, 1, 3)
    assert s.batch_debited == 4  # two accepted messages of two parts
    assert not s.finished
    assert [type(e) for e in s.events] == [CreditsDebited]
    assert batch_status_after(batch, outcome) == ("ambiguous", 3)


def test_the_last_resolution_completes_the_run_and_balances_the_credits() -> None:
    run, batch = a_run_with_an_ambiguous_batch()
    first = resolution_outcome(resolved([(5, "m5"), (6, "m6"), (7, None)], 3), {5, 6, 7, 8, 9, 10})
    s1 = settle_batch(run, batch, first, campaign_accepted_before=0, credits_available=0, at=AT)
    assert s1 is not None
    status, left = batch_status_after(batch, first)
    batch = PlannedBatch(status, cost=12, ambiguous=left)
    last = resolution_outcome(resolved([(8, None), (9, None), (10, "m10")], 0), {8, 9, 10})
    s2 = settle_batch(s1.run, batch, last, campaign_accepted_before=0, credits_available=0, at=AT)
    assert s2 is not None
    assert s2.finished
    assert s2.campaign_status == "completed"
    assert (s2.run.accepted, s2.run.failed, s2.run.ambiguous) == (7, 3, 0)
    assert s2.run.credits_reserved == s2.run.credits_debited + s2.run.credits_released
    assert s2.run.credits_debited == 4 + 4 + 2
    assert [type(e) for e in s2.events] == [CreditsDebited, CreditsReleased, CampaignCompleted]
    assert batch_status_after(batch, last) == ("sent", 0)


def test_a_resolution_seen_again_resolves_nobody() -> None:
    run, batch = a_run_with_an_ambiguous_batch()
    again = resolution_outcome(resolved([(5, "m5"), (6, "m6")], 4), still_ambiguous={7, 8, 9, 10})
    assert again == BatchOutcome("resolved")
    assert settle_batch(run, batch, again, campaign_accepted_before=0, credits_available=0, at=AT) is None


def test_a_resolution_for_a_batch_that_is_not_ambiguous_changes_nothing() -> None:
    run, _ = a_run_with_an_ambiguous_batch()
    outcome = resolution_outcome(resolved([(5, "m5")], 0), {5})
    assert (
        settle_batch(
            run, PlannedBatch("sent", 12), outcome, campaign_accepted_before=0, credits_available=0, at=AT
        )
        is None
    )


def test_recipients_an_operator_failed_are_abandoned_the_others_failed() -> None:
    assert failed_state(resolved([(1, None), (2, None)], remaining=0)) == "abandoned"
    looked_up = resolved([(1, "m1"), (2, None)], remaining=0)
    assert looked_up.resolution == "status_lookup"
    assert failed_state(looked_up) == "failed"
