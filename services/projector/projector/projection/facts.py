"""Tenant, campaign and engagement facts: applied once per event id, in log order (a handful per campaign,
one statement each), engagement set-based per poll."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from projector.projection.poll import Poll, campaign_of
from projector.store import facts as store_facts
from projector.store import writes
from projector.store.facts import CampaignFields, StatusChange
from shared.broker import Delivery
from shared.db import Conn
from shared.events import (
    ApiKeyIssued,
    ApiKeyRevoked,
    CampaignCancelled,
    CampaignCompleted,
    CampaignCreated,
    CampaignEnqueued,
    CampaignEnqueueRefused,
    CampaignFailed,
    CampaignPaused,
    CampaignScheduled,
    CampaignUpdated,
    ContactUnsubscribed,
    CreditsDebited,
    CreditsReleased,
    CreditsReserved,
    CreditsToppedUp,
    Event,
    LinkClicked,
    SubscriptionChanged,
    TenantRegistered,
)

# Applied once per event id: increments and last-writer fields would move again on a duplicate.
ONCE = (
    TenantRegistered,
    ApiKeyIssued,
    ApiKeyRevoked,
    SubscriptionChanged,
    CreditsToppedUp,
    CampaignCreated,
    CampaignUpdated,
    CampaignScheduled,
    CampaignEnqueued,
    CampaignPaused,
    CampaignCancelled,
    CampaignCompleted,
    CampaignFailed,
    CampaignEnqueueRefused,
    CreditsReserved,
    CreditsDebited,
    CreditsReleased,
    LinkClicked,
    ContactUnsubscribed,
)
CREDITS = {
    CreditsReserved: "credits_reserved",
    CreditsDebited: "credits_debited",
    CreditsReleased: "credits_released",
}


async def apply_facts(conn: Conn, facts: list[Delivery]) -> list[Delivery]:
    """Apply each new once-only fact in log order; returns the engagement events (applied set-based)."""
    new = await writes.claim_events(conn, [d.envelope.event_id for d in facts])
    engagement: list[Delivery] = []
    for d in facts:
        if d.envelope.event_id not in new:
            continue
        new.discard(d.envelope.event_id)  # the same event twice in one poll: the first one counts
        if isinstance(d.event, LinkClicked | ContactUnsubscribed):
            engagement.append(d)
        else:
            await _apply_fact(conn, d)
    return engagement


async def _apply_fact(conn: Conn, d: Delivery) -> None:
    e, env = d.event, d.envelope
    tid, cid, at = env.tenant_id, campaign_of(d), env.occurred_at
    if isinstance(e, TenantRegistered):
        await store_facts.upsert_tenant(
            conn, tid or "", e.name, e.channel.value, e.default_region, e.sender_id
        )
    elif isinstance(e, ApiKeyIssued):
        await store_facts.issue_key(conn, e.key_hash, e.key_id, tid or "")
    elif isinstance(e, ApiKeyRevoked):
        await store_facts.revoke_key(conn, e.key_id)
    elif isinstance(e, SubscriptionChanged):
        await store_facts.set_subscription(conn, tid or "", e.status)
    elif isinstance(e, CreditsToppedUp):
        await store_facts.add_tenant_credits(conn, tid or "", e.credits)
    elif isinstance(e, CampaignCreated):
        fields = CampaignFields(e.name, e.text, e.message_type.value, e.sender_id, e.offer_url, e.created_at)
        await store_facts.create_campaign(conn, cid, tid, e.channel.value, fields)
    elif isinstance(e, CampaignUpdated):
        fields = CampaignFields(e.name, e.text, e.message_type.value, e.sender_id, e.offer_url, e.updated_at)
        await store_facts.update_campaign(conn, cid, fields)
    elif isinstance(e, CampaignEnqueueRefused):
        await store_facts.set_enqueue_error(conn, cid, tid, e.code, e.message, e.refused_at)
    elif isinstance(e, CreditsReserved | CreditsDebited | CreditsReleased):
        await store_facts.add_campaign_credits(conn, cid, tid, CREDITS[type(e)], e.credits)
    else:
        if isinstance(e, CampaignEnqueued):
            await store_facts.record_run(conn, e.run_token, cid, e.run_kind.value)
        change = _status_change(e, at)
        if change is not None:
            await store_facts.set_campaign_status(conn, cid, tid, change)


def _status_change(e: Event, at: datetime) -> StatusChange | None:
    if isinstance(e, CampaignScheduled):
        return StatusChange("scheduled", at, scheduled_at=e.scheduled_at)
    if isinstance(e, CampaignEnqueued):
        return StatusChange(
            "sending",
            at,
            run_token=e.run_token,
            run_kind=e.run_kind.value,
            run_total=e.total,
            batch_count=e.batch_count,
            total=e.campaign_total,
            started_at=e.started_at,
        )
    if isinstance(e, CampaignPaused):
        return StatusChange("paused", at)
    if isinstance(e, CampaignCancelled):
        return StatusChange("cancelled", at, finished_at=e.cancelled_at)
    if isinstance(e, CampaignCompleted):
        return StatusChange("completed", at, finished_at=e.finished_at)
    if isinstance(e, CampaignFailed):
        return StatusChange("failed", at, finished_at=e.finished_at)
    return None  # CampaignResumed: the resumed run arrives as its own CampaignEnqueued


async def apply_engagement(conn: Conn, events: list[Delivery], poll: Poll) -> None:
    if not events:
        return
    grouped: dict[tuple[str, int, str], list[datetime]] = defaultdict(list)
    for d in events:
        e = d.event
        if isinstance(e, LinkClicked):
            grouped[(campaign_of(d), e.recipient_id, "click")].append(e.clicked_at)
        elif isinstance(e, ContactUnsubscribed):
            grouped[(campaign_of(d), e.recipient_id, "unsubscribe")].append(e.unsubscribed_at)
    rows = [(c, r, k, len(ts), min(ts), max(ts)) for (c, r, k), ts in grouped.items()]
    for rec in await writes.add_engagements(conn, rows):
        delta = poll.campaigns[rec["campaign_id"]]
        if rec["kind"] == "click":
            delta.clicks += len(grouped[(rec["campaign_id"], rec["recipient_id"], "click")])
            delta.clicked += int(rec["first"])
        else:
            delta.unsubscribed += int(rec["first"])
