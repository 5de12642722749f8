"""The enqueuer's decisions: plain data in, a decision out. No I/O, no clock, no random ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime

import phonenumbers

from shared.events import (
    BatchAmbiguous,
    BatchDeferred,
    BatchFailed,
    BatchSent,
    CampaignCompleted,
    CampaignFailed,
    Event,
)

ENQUEUABLE = frozenset({"draft", "scheduled", "paused"})
SENDER_NUMERIC = re.compile(r"^\+?[0-9]{1,16}$")
SENDER_ALPHANUMERIC = re.compile(r"^[A-Za-z0-9 ._&-]{1,11}$")


class Refused(Exception):
    """A command refused for a business reason: HTTP status, stable code, plain message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check_enqueuable(status: str) -> None:
    if status == "sending":
        raise Refused(409, "ALREADY_SENDING", "The campaign is already sending.")
    if status not in ENQUEUABLE:
        raise Refused(
            409,
            "INVALID_STATUS",
            f"A campaign in status '{status}' cannot be sent; only draft, scheduled or paused can.",
        )


def normalise_phone(raw: str, region: str) -> str:
    """E.164 form of `raw`, read in `region` when it has no country code; ValueError when invalid."""
    try:
        number = phonenumbers.parse(raw.strip(), region.upper())
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number for its country")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def check_sender_id(sender_id: str) -> None:
    """Mitto's rule: numeric 1-16 characters or alphanumeric 1-11."""
    if not (SENDER_NUMERIC.match(sender_id) or SENDER_ALPHANUMERIC.match(sender_id)):
        raise ValueError("sender id must be numeric (1-16 digits) or alphanumeric (1-11 characters)")


def batch_id(campaign_id: str, run_token: str, index: int) -> str:
    return f"{campaign_id}:{run_token}:{index}"


def batch_count(total: int, batch_size: int) -> int:
    return -(-total // batch_size)


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


@dataclass(frozen=True)
class BatchOutcome:
    status: str  # sent | failed | ambiguous | deferred
    accepted_ids: tuple[int, ...] = ()
    failed_ids: tuple[int, ...] = ()
    ambiguous_ids: tuple[int, ...] = ()
    deferred_ids: tuple[int, ...] = ()


def outcome_of(event: BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred) -> BatchOutcome:
    """Which recipients of the batch ended how. Items the sender suppressed as already sent elsewhere
    count for nothing here: their state comes from the batch that did send them."""
    if isinstance(event, BatchSent):
        accepted = tuple(r.id for r in event.results if r.message_id is not None)
        failed = tuple(r.id for r in event.results if r.message_id is None and r.duplicate_of is None)
        return BatchOutcome("sent", accepted_ids=accepted, failed_ids=failed)
    if isinstance(event, BatchFailed):
        return BatchOutcome("failed", failed_ids=event.recipient_ids)
    if isinstance(event, BatchAmbiguous):
        return BatchOutcome("ambiguous", ambiguous_ids=event.recipient_ids)
    return BatchOutcome("deferred", deferred_ids=event.recipient_ids)


@dataclass(frozen=True)
class Settlement:
    run: Run
    finished: bool
    events: tuple[Event, ...]
    campaign_status: str | None  # new campaign status, when the run decides it


def settle_batch(
    run: Run, outcome: BatchOutcome, *, campaign_accepted_before: int, at: datetime
) -> Settlement:
    """Count one batch's first outcome into its run and decide whether the run is over.

    A run is completed when every batch has an outcome and none is ambiguous; failed when nobody in the
    campaign was accepted. Ambiguous batches hold the run in `sending` until an operator resolves them.
    A paused or cancelled run ends without a completion event: the campaign already says why.
    """
    updated = replace(
        run,
        settled=run.settled + 1,
        accepted=run.accepted + len(outcome.accepted_ids),
        failed=run.failed + len(outcome.failed_ids),
        ambiguous=run.ambiguous + len(outcome.ambiguous_ids),
        deferred=run.deferred + len(outcome.deferred_ids),
    )
    if updated.settled < updated.batch_count or run.status != "sending" or updated.ambiguous:
        return Settlement(updated, False, (), None)
    if campaign_accepted_before + updated.accepted == 0:
        done = replace(updated, status="failed")
        event: Event = CampaignFailed(
            run_token=run.token, reason="every recipient failed", failed=updated.failed, finished_at=at
        )
        return Settlement(done, True, (event,), "failed")
    done = replace(updated, status="completed")
    event = CampaignCompleted(
        run_token=run.token, accepted=updated.accepted, failed=updated.failed, finished_at=at
    )
    return Settlement(done, True, (event,), "completed")
