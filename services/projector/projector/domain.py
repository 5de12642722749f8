"""The projector's rules, pure: how reports merge, how a send result moves a recipient, how counters move,
what each count means, and what an operator should run for each kind of unsettled work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL = frozenset({"delivered", "failed"})

# Batch statuses: queued and processing hold their members in the batch row; the others are outcomes.
OPEN_BATCH = frozenset({"queued", "processing"})
# Members stay listed while the batch is open or was deferred (paused/cancelled before the call).
MEMBER_BATCH = frozenset({"queued", "processing", "deferred"})
# Runs whose recipients have no send result yet: a claim of theirs counts every member as processing. Any
# other run is checked recipient by recipient: a retry takes failed ones, and a resume of a paused retry
# takes recipients the retry queued again, who still hold their failed result.
RUNS_OF_UNSENT = frozenset({"initial"})


@dataclass(frozen=True)
class DeliveryState:
    status: str  # sent | delivered | failed | unknown
    raw_status: str
    error: str | None
    provider_time: datetime | None
    reported_at: datetime


def merge_delivery(current: DeliveryState | None, report: DeliveryState) -> DeliveryState:
    """Final states absorb; a non-final report replaces a non-final one only when it is not older.

    Reports of one message share a partition, so they are merged in the same order on every replay."""
    if current is None:
        return report
    if current.status in FINAL:
        return current
    if report.status in FINAL:
        return report
    if current.provider_time and report.provider_time and report.provider_time < current.provider_time:
        return current
    return report


def fold_reports(current: DeliveryState | None, reports: Iterable[DeliveryState]) -> DeliveryState | None:
    """`merge_delivery` over reports in log order. (Not associative: always fold from the stored state.)"""
    state = current
    for r in reports:
        state = merge_delivery(state, r)
    return state


def send_result_applies(
    previous: str | None, new: str, *, resolution: bool = False, same_batch: bool = False
) -> bool:
    """Whether a send result may replace the recipient's recorded one (`same_batch`: recorded under the
    batch the new result is of).

    An accepted message is final on the send side. A rejection may be followed by a later run's
    attempt (retry failed), and an ambiguous hand-over by its resolution. A resolution settles only its
    own batch's hand-over: published again after a later run's result (an outbox relay's repeat), or
    read before that run's result was released from waiting for its run, it changes nothing."""
    if previous is None:
        return True
    if resolution:
        return same_batch and previous == "ambiguous"
    if previous == "accepted":
        return False
    return not (previous == "ambiguous" and new == "ambiguous")


@dataclass
class BatchDelta:
    """Changes to one batch's counters; status refresh and reconciliation read them."""

    accepted: int = 0
    rejected: int = 0
    ambiguous: int = 0
    delivered: int = 0
    delivery_failed: int = 0

    def send_status(self, status: str | None, sign: int) -> None:
        if status == "accepted":
            self.accepted += sign
        elif status == "rejected":
            self.rejected += sign
        elif status == "ambiguous":
            self.ambiguous += sign

    def delivery_change(self, status: str | None, sign: int) -> None:
        self.delivered += sign * int(status == "delivered")
        self.delivery_failed += sign * int(status == "failed")

    def is_empty(self) -> bool:
        return not (
            self.accepted or self.rejected or self.ambiguous or self.delivered or self.delivery_failed
        )


@dataclass
class CampaignDelta:
    """Changes to one campaign's counters from one consumed batch of events."""

    accepted: int = 0
    rejected: int = 0
    ambiguous: int = 0
    delivered: int = 0
    delivery_failed: int = 0
    processing: int = 0
    clicks: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    breakdown: Counter[str] = field(default_factory=Counter)

    def send_status(self, status: str | None, sign: int) -> None:
        if status == "accepted":
            self.accepted += sign
        elif status == "rejected":
            self.rejected += sign
        elif status == "ambiguous":
            self.ambiguous += sign

    def delivery(self, state: DeliveryState | None, sign: int) -> None:
        self.delivery_change(state.status if state else None, state.raw_status if state else None, sign)

    def delivery_change(self, status: str | None, raw_status: str | None, sign: int) -> None:
        self.delivered += sign * int(status == "delivered")
        self.delivery_failed += sign * int(status == "failed")
        if raw_status is not None:
            self.breakdown[raw_status] += sign

    def counters(self) -> tuple[int, ...]:
        return (
            self.accepted,
            self.rejected,
            self.ambiguous,
            self.delivered,
            self.delivery_failed,
            self.processing,
            self.clicks,
            self.clicked,
            self.unsubscribed,
        )

    def is_empty(self) -> bool:
        return not any(self.counters()) and not any(self.breakdown.values())


def stats(row: dict[str, Any]) -> dict[str, int]:
    """The canonical counts, one meaning each.

    accepted: the provider returned a message id. sent: accepted and not reported failed.
    failed: rejected at send or reported failed. processed = sent + failed. pendingDelivery = sent - delivered.
    """
    accepted, rejected = row["accepted"], row["rejected"]
    delivered, delivery_failed = row["delivered"], row["delivery_failed"]
    sent = accepted - delivery_failed
    failed = rejected + delivery_failed
    processed = sent + failed
    processing, ambiguous = row["processing"], row["ambiguous"]
    total = max(row["total"], processed + processing + ambiguous)
    return {
        "total": total,
        "queued": max(0, total - processed - processing - ambiguous),
        "processing": processing,
        "ambiguous": ambiguous,
        "accepted": accepted,
        "sent": sent,
        "delivered": delivered,
        "failed": failed,
        "rejected": rejected,
        "deliveryFailed": delivery_failed,
        "pendingDelivery": sent - delivered,
        "processed": processed,
        "clicked": row["clicked"],
        "clicks": row.get("clicks", 0),
        "unsubscribed": row["unsubscribed"],
    }


def progress_percent(s: dict[str, int]) -> float:
    return round(100.0 * s["processed"] / s["total"], 1) if s["total"] else 0.0


def campaign_status_alias(status: str) -> str:
    """Shopify's legacy `sent` is `completed`; everything else is already canonical."""
    return "completed" if status == "sent" else status


@dataclass(frozen=True)
class Resolution:
    """What an operator runs for one kind of unsettled work, and why it is safe."""

    command: str
    why: str


RESOLUTIONS: dict[str, Resolution] = {
    "stuckProcessing": Resolution(
        command="let the enqueuer's background loop republish the quiet run (after STUCK_RUN_AFTER_S) or restart "
        "the sender: a batch it finds claimed without an outcome turns ambiguous; then settle it with "
        "`python -m sender ambiguous show|fail|resend BATCH_ID`",
        why="the sender claimed these batches and recorded no outcome: its provider call was interrupted",
    ),
    "sentWithoutFinalStatus": Resolution(
        command="python -m dlr_ingest refresh --older-than-minutes N [--campaign ID | --bulk-id ID] "
        "(or POST /api/operator/refresh on dlr-ingest): asks Mitto for each message's status",
        why="Mitto accepted these messages and no final delivery report arrived",
    ),
    "ambiguousBatches": Resolution(
        command="python -m sender ambiguous show BATCH_ID, then `python -m sender ambiguous fail BATCH_ID` "
        "(or `resend` only when you know the batch did not go out)",
        why="Mitto may have accepted these batches (5xx, read timeout, crash after the call): never re-sent "
        "automatically",
    ),
    "stuckRuns": Resolution(
        command="python -m sender ambiguous list (a run waits for its ambiguous batches); a run with batches "
        "never claimed is republished by the enqueuer's background loop after STUCK_RUN_AFTER_S",
        why="the campaign is sending but none of its batches moved for the given time",
    ),
    "outcomesWaitingForRun": Resolution(
        command="look for the run's CampaignEnqueued in the projector's dead-letter topic (dlq.projector, with "
        "the reason); once the projector can apply it, `python -m projector rebuild` replays the log and applies both",
        why="the sender's outcomes of these runs were read but not their run's CampaignEnqueued, which the "
        "enqueuer publishes with the batches: the projector could not apply it",
    ),
}
