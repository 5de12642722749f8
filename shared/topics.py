"""Topic names and partition keys. The key keeps per-campaign (or per-message) order within a partition."""

from __future__ import annotations

from typing import Final

TENANT_EVENTS: Final = "tenant.events"
CAMPAIGN_EVENTS: Final = "campaign.events"
SMS_BATCHES: Final = "sms.batches"
SMS_OUTCOMES: Final = "sms.outcomes"
DELIVERY_REPORTS: Final = "delivery.reports"
ENGAGEMENT_EVENTS: Final = "engagement.events"

ALL_TOPICS: Final = (
    TENANT_EVENTS,
    CAMPAIGN_EVENTS,
    SMS_BATCHES,
    SMS_OUTCOMES,
    DELIVERY_REPORTS,
    ENGAGEMENT_EVENTS,
)

# Consumer groups; each has a dead-letter topic of its own.
CONSUMERS: Final = ("enqueuer", "sender", "projector", "dlr-ingest")


def dead_letter_topic(consumer: str) -> str:
    return f"dlq.{consumer}"


def all_topics_with_dead_letters() -> tuple[str, ...]:
    return ALL_TOPICS + tuple(dead_letter_topic(c) for c in CONSUMERS)
