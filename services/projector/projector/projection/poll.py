"""What one consumed batch changes beyond its own rows, and the campaign key every part agrees on."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from projector.domain import BatchDelta, CampaignDelta
from shared.broker import Delivery


@dataclass
class Poll:
    """Counters moved by one consumed batch, keyed by campaign and by batch."""

    campaigns: defaultdict[str, CampaignDelta] = field(default_factory=lambda: defaultdict(CampaignDelta))
    batches: defaultdict[str, BatchDelta] = field(default_factory=lambda: defaultdict(BatchDelta))
    tenants: dict[str, str] = field(default_factory=dict)  # campaign → tenant, from envelopes

    def delivery(self, campaign_id: str, batch_id: str, status: str | None, raw: str | None, n: int) -> None:
        self.campaigns[campaign_id].delivery_change(status, raw, n)
        self.batches[batch_id].delivery_change(status, n)


def campaign_of(d: Delivery) -> str:
    """The envelope's campaign id in PostgreSQL's text form: counters are keyed by it, and rows read back
    from SQL must land on the same key. An id that is not a UUID fails the event (dead letter)."""
    return str(uuid.UUID(d.envelope.campaign_id)) if d.envelope.campaign_id else ""
