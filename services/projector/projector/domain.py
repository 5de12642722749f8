"""The projector's rules, pure: how reports merge, how a send result moves a recipient, what stats mean."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL = frozenset({"delivered", "failed"})


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


def delivery_contribution(state: DeliveryState | None) -> tuple[int, int]:
    """(delivered, delivery_failed) that one message adds to its campaign."""
    if state is None:
        return 0, 0
    return int(state.status == "delivered"), int(state.status == "failed")


def send_result_applies(previous: str | None, new: str) -> bool:
    """Whether a send result may replace the recipient's recorded one.

    An accepted message is final on the send side. A rejection may be followed by a later run's
    attempt (retry failed), and an ambiguous hand-over by its resolution."""
    if previous is None:
        return True
    if previous == "accepted":
        return False
    return not (previous == "ambiguous" and new == "ambiguous")


@dataclass
class CampaignDelta:
    """Changes to one campaign's counters from one consumed batch of events."""

    accepted: int = 0
    rejected: int = 0
    ambiguous: int = 0
    delivered: int = 0
    delivery_failed: int = 0
    processing: int = 0
    breakdown: Counter[str] = field(default_factory=Counter)

    def send_status(self, status: str | None, sign: int) -> None:
        if status == "accepted":
            self.accepted += sign
        elif status == "rejected":
            self.rejected += sign
        elif status == "ambiguous":
            self.ambiguous += sign

    def delivery(self, state: DeliveryState | None, sign: int) -> None:
        delivered, failed = delivery_contribution(state)
        self.delivered += sign * delivered
        self.delivery_failed += sign * failed
        if state is not None:
            self.breakdown[state.raw_status] += sign

    def is_empty(self) -> bool:
        return not (
            self.accepted
            or self.rejected
            or self.ambiguous
            or self.delivered
            or self.delivery_failed
            or self.processing
            or any(self.breakdown.values())
        )


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
        "unsubscribed": row["unsubscribed"],
    }


def progress_percent(s: dict[str, int]) -> float:
    return round(100.0 * s["processed"] / s["total"], 1) if s["total"] else 0.0
