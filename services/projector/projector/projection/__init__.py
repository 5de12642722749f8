"""Applies one consumed batch of events to the read models: set-based SQL per event kind, counters moved
by transitions. Any interleaving of the topics converges to the same rows (see domain.py for the rules).

Within a poll the kinds are applied in a fixed order (facts, batches, outcomes, reports, engagement);
events of one kind keep their log order. Kinds from different topics commute, so the order is free, with
one exception: a run's outcomes wait (parked) until its CampaignEnqueued has been applied."""

from __future__ import annotations

from collections.abc import Sequence

from projector.projection.deliveries import apply_reports
from projector.projection.facts import ONCE, apply_engagement, apply_facts
from projector.projection.poll import Poll, campaign_of
from projector.projection.sends import OUTCOMES, apply_outcomes, apply_queued, release_outcomes
from projector.store import writes
from shared.broker import Delivery
from shared.db import Conn
from shared.events import BatchQueued, CampaignEnqueued, DeliveryReported, Event
from shared.topics import (
    CAMPAIGN_EVENTS,
    DELIVERY_REPORTS,
    ENGAGEMENT_EVENTS,
    SMS_BATCHES,
    SMS_OUTCOMES,
    TENANT_EVENTS,
)

CONSUMER = "projector"
TOPICS = (TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES, SMS_OUTCOMES, DELIVERY_REPORTS, ENGAGEMENT_EVENTS)
# Event type → how it is applied; types not listed (other services' events) are ignored.
KINDS: dict[type[Event], str] = {
    **dict.fromkeys(ONCE, "fact"),
    BatchQueued: "queued",
    **dict.fromkeys(OUTCOMES, "outcome"),
    DeliveryReported: "report",
}


async def apply(conn: Conn, deliveries: Sequence[Delivery], *, consumer: str = CONSUMER) -> None:
    """Apply `deliveries` in the caller's transaction. Records at or past the positions stored in the
    schema being written are applied; earlier ones are skipped (see `writes.lock_positions`)."""
    await writes.lock_apply(conn)
    positions = await writes.lock_positions(conn, consumer, {(d.topic, d.partition) for d in deliveries})
    fresh = [d for d in deliveries if d.offset >= positions.get((d.topic, d.partition), 0)]
    if not fresh:
        return
    poll = Poll()
    kinds: dict[str, list[Delivery]] = {"fact": [], "queued": [], "outcome": [], "report": []}
    for d in fresh:
        kind = KINDS.get(type(d.event))
        if kind is not None:
            kinds[kind].append(d)
        if d.envelope.campaign_id and d.envelope.tenant_id:
            poll.tenants[campaign_of(d)] = d.envelope.tenant_id
    engagement = await apply_facts(conn, kinds["fact"])
    await apply_queued(conn, kinds["queued"])
    enqueued = [d.event.run_token for d in kinds["fact"] if isinstance(d.event, CampaignEnqueued)]
    outcomes, runs = await release_outcomes(conn, kinds["outcome"], enqueued)
    await apply_outcomes(conn, outcomes, runs, poll)
    await apply_reports(conn, kinds["report"], poll)
    await apply_engagement(conn, engagement, poll)
    await _save(conn, poll)


async def _save(conn: Conn, poll: Poll) -> None:
    items = [(cid, d) for cid, d in poll.campaigns.items() if not d.is_empty()]
    if items:
        unknown = [cid for cid, _ in items if cid not in poll.tenants]
        known = await writes.tenants_of(conn, unknown) if unknown else {}
        await writes.save_campaign_deltas(
            conn, [(cid, poll.tenants.get(cid) or known.get(cid), d) for cid, d in items]
        )
    batches = [(bid, d) for bid, d in poll.batches.items() if not d.is_empty()]
    if batches:
        await writes.save_batch_deltas(conn, batches)
