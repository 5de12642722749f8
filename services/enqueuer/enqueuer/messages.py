"""Outbox messages of the enqueuer's two topics (campaign.events keyed by campaign, tenant.events by tenant)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from shared import db
from shared.events import EnvelopeHead, Event, envelope_for
from shared.topics import CAMPAIGN_EVENTS, TENANT_EVENTS


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def campaign_event(
    event: Event, campaign_id: str, tenant_id: str, at: datetime, caused_by: EnvelopeHead | None = None
) -> db.OutboxMessage:
    return db.OutboxMessage(
        CAMPAIGN_EVENTS,
        campaign_id,
        envelope_for(
            event, occurred_at=at, tenant_id=tenant_id, campaign_id=campaign_id, caused_by=caused_by
        ),
    )


def tenant_event(event: Event, tenant_id: str, at: datetime) -> db.OutboxMessage:
    return db.OutboxMessage(
        TENANT_EVENTS, tenant_id, envelope_for(event, occurred_at=at, tenant_id=tenant_id)
    )
