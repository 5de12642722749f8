"""The enqueuer's decisions: plain data in, a decision out. No I/O, no clock, no random ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime

import phonenumbers

from enqueuer import phones
from shared.events import (
    BatchAmbiguous,
    BatchDeferred,
    BatchFailed,
    BatchResolved,
    BatchSent,
    CampaignCompleted,
    CampaignFailed,
    CreditsDebited,
    CreditsReleased,
    CreditsReserved,
    Event,
)

SENDER_NUMERIC = re.compile(r"^[0-9]{1,16}$")
SENDER_ALPHANUMERIC = re.compile(r"^[A-Za-z0-9 ._&-]{1,11}$")

# Which statuses each command accepts (the campaign status model of docs/architecture.md).
ALLOWED: dict[str, frozenset[str]] = {
    "edit": frozenset({"draft", "scheduled"}),
    "schedule": frozenset({"draft", "scheduled"}),
    "enqueue": frozenset({"draft", "scheduled", "paused"}),
    "pause": frozenset({"sending"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"draft", "scheduled", "paused", "sending"}),
    "retry_failed": frozenset({"completed", "failed"}),
}


class Refused(Exception):
    """A command refused for a business reason: HTTP status, stable code, plain message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def check_transition(command: str, status: str) -> None:
    """Refuse `command` on a campaign in `status` with 409 (ALREADY_SENDING for a second send)."""
    if status in ALLOWED[command]:
        return
    if status == "sending" and command in ("enqueue", "retry_failed"):
        raise Refused(409, "ALREADY_SENDING", "The campaign is already sending.")
    allowed = ", ".join(sorted(ALLOWED[command]))
    raise Refused(
        409,
        "INVALID_STATUS",
        f"A campaign in status '{status}' cannot be {_PAST[command]}; only {allowed} can.",
        campaignStatus=status,
    )


_PAST = {
    "edit": "edited",
    "schedule": "scheduled",
    "enqueue": "sent",
    "pause": "paused",
    "resume": "resumed",
    "cancel": "cancelled",
    "retry_failed": "retried",
}


def check_schedule_time(scheduled_at: datetime, now: datetime) -> None:
    if scheduled_at.tzinfo is None:
        raise Refused(400, "INVALID_SCHEDULE", "scheduledAt needs a time zone (e.g. 2030-01-01T09:00:00Z).")
    if scheduled_at <= now:
        raise Refused(400, "INVALID_SCHEDULE", "scheduledAt must be in the future.")


def normalise_phone(raw: str, region: str) -> str:
    """E.164 form of `raw`, read in `region` when it has no country code; ValueError when invalid."""
    return phones.normalise(raw, region)


def check_sender_id(sender_id: str) -> None:
    """Mitto's rule: numeric 1-16 digits or alphanumeric 1-11 characters."""
    if not (SENDER_NUMERIC.match(sender_id) or SENDER_ALPHANUMERIC.match(sender_id)):
        raise ValueError("sender id must be numeric (1-16 digits) or alphanumeric (1-11 characters)")


def check_region(region: str) -> str:
    code = region.upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"'{region}' is not a region phonenumbers knows (ISO 3166 alpha-2, e.g. GR)")
    return code


def batch_id(campaign_id: str, run_token: str, index: int) -> str:
    return f"{campaign_id}:{run_token}:{index}"


def batch_count(total: int, batch_size: int) -> int:
    return -(-total // batch_size)


# --- runs, outcomes and credits ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    token: str
    campaign_id: str
    total: int
    batch_count: int
    settled: int = 0
    accepted: int = 0
    failed: int = 0
    ambiguous: int = 0
    deferred: int = 0
    status: str = "sending"
    credits_reserved: int = 0
    credits_debited: int = 0
    credits_released: int = 0
    reservation_open: bool = False


@dataclass(frozen=True)
class PlannedBatch:
    """A batch as planned, with what is already known of it."""

    status: str  # queued | claimed | sent | failed | ambiguous | deferred
    cost: int  # credits reserved for it
    ambiguous: int = 0


@dataclass(frozen=True)
class BatchOutcome:
    status: str  # sent | failed | ambiguous | deferred | resolved (some of an ambiguous batch became known)
    accepted_ids: tuple[int, ...] = ()
    failed_ids: tuple[int, ...] = ()
    ambiguous_ids: tuple[int, ...] = ()
    deferred_ids: tuple[int, ...] = ()
    accepted_parts: int = 0

    @property
    def resolved_count(self) -> int:
        return len(self.accepted_ids) + len(self.failed_ids)


def resolution_outcome(event: BatchResolved, still_ambiguous: set[int]) -> BatchOutcome:
    """The part of a resolution that is news: recipients of the batch that were still ambiguous. A
    resolution seen twice (or results already known) resolves nobody again."""
    fresh = [r for r in event.results if r.id in still_ambiguous]
    accepted = [r for r in fresh if r.message_id is not None]
    return BatchOutcome(
        "resolved",
        accepted_ids=tuple(r.id for r in accepted),
        failed_ids=tuple(r.id for r in fresh if r.message_id is None),
        accepted_parts=sum(max(r.parts, 1) for r in accepted),
    )


def failed_state(event: BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred | BatchResolved) -> str:
    """The state of the recipients an outcome failed: `abandoned` when an operator failed them out of an
    ambiguous batch (they may have been delivered and are never sent again, so a retry leaves them out),
    else `failed` (provably not sent: a retry may send them)."""
    if isinstance(event, BatchResolved) and event.resolution == "operator_fail":
        return "abandoned"
    return "failed"


def batch_status_after(batch: PlannedBatch, outcome: BatchOutcome) -> tuple[str, int]:
    """(status, ambiguous recipients) the batch keeps after `outcome`."""
    if outcome.status != "resolved":
        return outcome.status, len(outcome.ambiguous_ids)
    left = max(batch.ambiguous - outcome.resolved_count, 0)
    return ("ambiguous" if left else "sent"), left


def outcome_of(event: BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred) -> BatchOutcome:
    """Which recipients of the batch ended how. Items the sender suppressed as already sent elsewhere
    count for nothing here: their state comes from the batch that did send them."""
    if isinstance(event, BatchSent):
        accepted = [r for r in event.results if r.message_id is not None]
        failed = tuple(r.id for r in event.results if r.message_id is None and r.duplicate_of is None)
        return BatchOutcome(
            "sent",
            accepted_ids=tuple(r.id for r in accepted),
            failed_ids=failed,
            accepted_parts=sum(max(r.parts, 1) for r in accepted),
        )
    if isinstance(event, BatchFailed):
        return BatchOutcome("failed", failed_ids=event.recipient_ids)
    if isinstance(event, BatchAmbiguous):
        return BatchOutcome("ambiguous", ambiguous_ids=event.recipient_ids)
    return BatchOutcome("deferred", deferred_ids=event.recipient_ids)


@dataclass(frozen=True)
class Settlement:
    run: Run
    batch_debited: int  # credits debited for this batch by this settlement
    late_charge: int  # credits reserved and debited at once (the reservation had already expired)
    finished: bool
    events: tuple[Event, ...]
    campaign_status: str | None  # new campaign status, when the run decides it


def settle_batch(
    run: Run,
    batch: PlannedBatch,
    outcome: BatchOutcome,
    *,
    campaign_accepted_before: int,
    credits_available: int,
    at: datetime,
) -> Settlement | None:
    """Count one batch outcome into its run; None when it changes nothing (a duplicate).

    A batch settles once, except that an ambiguous batch may later be resolved as sent or failed.
    Credits: accepted parts are debited, never more than the batch's reservation; when every batch has an
    outcome and none is ambiguous, the rest of the run's reservation is released, so that
    reserved = debited + released. An acceptance after the reservation expired is charged by reserving and
    debiting at once from the available balance, never below zero.
    A run is completed when every batch has an outcome and none is ambiguous; failed when nobody in the
    campaign was accepted. A paused or cancelled run ends without a completion event.
    """
    resolving = batch.status == "ambiguous" and outcome.status in ("sent", "failed", "resolved")
    if batch.status not in ("queued", "claimed") and not resolving:
        return None
    if outcome.status == "resolved" and outcome.resolved_count == 0:
        return None
    no_longer_ambiguous = outcome.resolved_count if outcome.status == "resolved" else batch.ambiguous
    updated = replace(
        run,
        settled=run.settled + (0 if resolving else 1),
        accepted=run.accepted + len(outcome.accepted_ids),
        failed=run.failed + len(outcome.failed_ids),
        ambiguous=run.ambiguous + len(outcome.ambiguous_ids) - (no_longer_ambiguous if resolving else 0),
        deferred=run.deferred + len(outcome.deferred_ids),
    )
    events: list[Event] = []
    debit = late = 0
    if outcome.accepted_parts:
        if run.reservation_open:
            debit = min(outcome.accepted_parts, batch.cost)
            if debit:
                updated = replace(updated, credits_debited=updated.credits_debited + debit)
                events.append(CreditsDebited(run_token=run.token, credits=debit))
        else:
            late = min(outcome.accepted_parts, credits_available)
            if late:
                updated = replace(
                    updated,
                    credits_reserved=updated.credits_reserved + late,
                    credits_debited=updated.credits_debited + late,
                )
                events += [
                    CreditsReserved(run_token=run.token, credits=late),
                    CreditsDebited(run_token=run.token, credits=late),
                ]
    all_settled = updated.settled >= updated.batch_count and updated.ambiguous == 0
    if all_settled and updated.reservation_open:
        updated, released = close_reservation(updated)
        events += released
    if not all_settled or run.status != "sending":
        return Settlement(updated, debit, late, False, tuple(events), None)
    if campaign_accepted_before + updated.accepted == 0:
        updated = replace(updated, status="failed")
        events.append(
            CampaignFailed(
                run_token=run.token, reason="every recipient failed", failed=updated.failed, finished_at=at
            )
        )
        return Settlement(updated, debit, late, True, tuple(events), "failed")
    updated = replace(updated, status="completed")
    events.append(
        CampaignCompleted(
            run_token=run.token, accepted=updated.accepted, failed=updated.failed, finished_at=at
        )
    )
    return Settlement(updated, debit, late, True, tuple(events), "completed")


def close_reservation(run: Run) -> tuple[Run, list[Event]]:
    """Release what the run still holds (at its end, or when the reservation expires)."""
    rest = run.credits_reserved - run.credits_debited - run.credits_released
    closed = replace(run, reservation_open=False, credits_released=run.credits_released + max(rest, 0))
    return closed, [CreditsReleased(run_token=run.token, credits=rest)] if rest > 0 else []


def run_settled(run: Run) -> bool:
    """Every batch of the run has an outcome (ambiguous counts as one): nothing of it is still on its way."""
    return run.settled >= run.batch_count
