"""The enqueuer's pure decisions: status transitions, run settlement and the credit arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from enqueuer import domain
from enqueuer.domain import BatchOutcome, PlannedBatch, Refused, Run, settle_batch
from hypothesis import given
from hypothesis import strategies as st

from shared.events import CampaignCompleted, CampaignFailed, CreditsDebited, CreditsReleased, CreditsReserved

AT = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ("draft", "scheduled", "sending", "paused", "completed", "failed", "cancelled")
ALLOWED = {
    "edit": {"draft", "scheduled"},
    "schedule": {"draft", "scheduled"},
    "enqueue": {"draft", "scheduled", "paused"},
    "pause": {"sending"},
    "resume": {"paused"},
    "cancel": {"draft", "scheduled", "paused", "sending"},
    "retry_failed": {"completed", "failed"},
}


@pytest.mark.parametrize("command", sorted(ALLOWED))
@pytest.mark.parametrize("status", STATUSES)
def test_every_transition_is_allowed_or_refused_with_409(command: str, status: str) -> None:
    if status in ALLOWED[command]:
        domain.check_transition(command, status)
        return
    with pytest.raises(Refused) as refused:
        domain.check_transition(command, status)
    assert refused.value.status == 409
    expected = (
        "ALREADY_SENDING"
        if status == "sending" and command in ("enqueue", "retry_failed")
        else "INVALID_STATUS"
    )
    assert refused.value.code == expected


def test_schedule_time_must_be_future_and_zoned() -> None:
    domain.check_schedule_time(AT + timedelta(seconds=1), AT)
    for bad in (AT, AT - timedelta(days=1), datetime(2030, 1, 1)):
        with pytest.raises(Refused):
            domain.check_schedule_time(bad, AT)


@pytest.mark.parametrize("sender", ["1", "1234567890123456", "Shop", "My Shop 1", "A" * 11])
def test_sender_ids_mitto_accepts(sender: str) -> None:
    domain.check_sender_id(sender)


@pytest.mark.parametrize("sender", ["", "12345678901234567", "A" * 12, "Shöp", "+3069"])
def test_sender_ids_mitto_refuses(sender: str) -> None:
    with pytest.raises(ValueError, match="sender id"):
        domain.check_sender_id(sender)


def test_phone_normalised_to_e164_with_the_default_region() -> None:
    assert domain.normalise_phone("694 000 0001", "GR") == "+306940000001"
    assert domain.normalise_phone("+1 (415) 555-2671", "GR") == "+14155552671"
    with pytest.raises(ValueError, match="valid"):
        domain.normalise_phone("12", "GR")


def a_run(batches: int = 2, reserved: int = 20, **kw: object) -> Run:
    return Run(
        "r1", "c1", total=10, batch_count=batches, credits_reserved=reserved, reservation_open=True, **kw
    )  # type: ignore[arg-type]


def test_last_batch_completes_the_run_debits_accepted_parts_and_releases_the_rest() -> None:
    run = a_run()
    s1 = settle_batch(
        run,
        PlannedBatch("queued", 10),
        BatchOutcome("sent", accepted_ids=(1, 2, 3), failed_ids=(4, 5), accepted_parts=6),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s1 is not None
    assert [type(e) for e in s1.events] == [CreditsDebited]
    assert s1.run.credits_debited == 6
    s2 = settle_batch(
        s1.run,
        PlannedBatch("claimed", 10),
        BatchOutcome("failed", failed_ids=(6, 7, 8, 9, 10)),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s2 is not None
    assert [type(e) for e in s2.events] == [CreditsReleased, CampaignCompleted]
    assert s2.run.credits_released == 14
    assert s2.run.credits_reserved == s2.run.credits_debited + s2.run.credits_released
    assert s2.campaign_status == "completed"


def test_a_run_where_everyone_failed_fails_and_releases_everything() -> None:
    s = settle_batch(
        a_run(batches=1),
        PlannedBatch("queued", 20),
        BatchOutcome("failed", failed_ids=tuple(range(10))),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s is not None
    assert [type(e) for e in s.events] == [CreditsReleased, CampaignFailed]
    assert s.campaign_status == "failed"


def test_debit_never_exceeds_the_batch_reservation() -> None:
    s = settle_batch(
        a_run(batches=2),
        PlannedBatch("queued", 5),
        BatchOutcome("sent", accepted_ids=(1, 2), accepted_parts=9),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s is not None
    assert s.batch_debited == 5


def test_a_duplicate_outcome_changes_nothing() -> None:
    for status in ("sent", "failed", "deferred"):
        assert (
            settle_batch(
                a_run(),
                PlannedBatch(status, 10),
                BatchOutcome("sent", accepted_ids=(1,), accepted_parts=1),
                campaign_accepted_before=0,
                credits_available=0,
                at=AT,
            )
            is None
        )


def test_an_ambiguous_batch_holds_the_run_and_its_credits_until_resolved() -> None:
    s1 = settle_batch(
        a_run(batches=1),
        PlannedBatch("queued", 20),
        BatchOutcome("ambiguous", ambiguous_ids=tuple(range(10))),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s1 is not None
    assert s1.events == ()
    assert s1.run.reservation_open
    s2 = settle_batch(
        s1.run,
        PlannedBatch("ambiguous", 20, ambiguous=10),
        BatchOutcome("sent", accepted_ids=tuple(range(10)), accepted_parts=10),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s2 is not None
    assert [type(e) for e in s2.events] == [CreditsDebited, CreditsReleased, CampaignCompleted]
    assert s2.run.ambiguous == 0


def test_after_the_reservation_expired_a_late_acceptance_is_charged_from_the_balance_never_below_zero() -> (
    None
):
    run = a_run(batches=1)
    expired, released = domain.close_reservation(run)
    assert [type(e) for e in released] == [CreditsReleased]
    s = settle_batch(
        expired,
        PlannedBatch("queued", 20),
        BatchOutcome("sent", accepted_ids=(1, 2), accepted_parts=4),
        campaign_accepted_before=0,
        credits_available=3,
        at=AT,
    )
    assert s is not None
    assert s.late_charge == 3
    assert [type(e) for e in s.events[:2]] == [CreditsReserved, CreditsDebited]
    assert s.run.credits_reserved == s.run.credits_debited + s.run.credits_released


def test_a_paused_run_ends_without_a_campaign_event_but_releases_its_hold() -> None:
    run = a_run(batches=1, status="paused")
    s = settle_batch(
        run,
        PlannedBatch("queued", 20),
        BatchOutcome("deferred", deferred_ids=tuple(range(10))),
        campaign_accepted_before=0,
        credits_available=0,
        at=AT,
    )
    assert s is not None
    assert [type(e) for e in s.events] == [CreditsReleased]
    assert s.campaign_status is None


@given(
    st.lists(
        st.tuples(
            st.integers(1, 50),
            st.sampled_from(["sent", "failed", "deferred", "ambiguous"]),
            st.integers(0, 5),
            st.integers(0, 200),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_reserved_equals_debited_plus_released_and_nothing_goes_negative(
    batches: list[tuple[int, str, int, int]],
) -> None:
    """Any mix of outcomes, with ambiguous batches resolved at the end: the run's credits balance."""
    costs = [cost for cost, *_ in batches]
    run = Run(
        "r", "c", total=100, batch_count=len(batches), credits_reserved=sum(costs), reservation_open=True
    )
    pending: list[tuple[int, int]] = []
    for cost, status, accepted, parts in batches:
        ids = tuple(range(accepted))
        outcome = {
            "sent": BatchOutcome("sent", accepted_ids=ids, accepted_parts=parts if accepted else 0),
            "failed": BatchOutcome("failed", failed_ids=(1,)),
            "deferred": BatchOutcome("deferred", deferred_ids=(1,)),
            "ambiguous": BatchOutcome("ambiguous", ambiguous_ids=(1,)),
        }[status]
        s = settle_batch(
            run, PlannedBatch("queued", cost), outcome, campaign_accepted_before=0, credits_available=0, at=AT
        )
        assert s is not None
        run = s.run
        if status == "ambiguous":
            pending.append((cost, 1))
    for cost, n in pending:
        s = settle_batch(
            run,
            PlannedBatch("ambiguous", cost, ambiguous=n),
            BatchOutcome("failed", failed_ids=(1,)),
            campaign_accepted_before=0,
            credits_available=0,
            at=AT,
        )
        assert s is not None
        run = s.run
    assert not run.reservation_open
    assert run.credits_reserved == run.credits_debited + run.credits_released
    assert run.credits_debited >= 0
    assert run.credits_released >= 0
