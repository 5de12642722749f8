"""The sender's decisions: plain data in, a decision out. No I/O, no clock, no random numbers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sender.mitto import Accepted
from shared.events import BatchQueued, BatchRecipient, MessageType, RecipientResult
from shared.links import LinkSettings, link_url, make_token
from shared.sms import compose, segments

OUTCOME_NAMESPACE = uuid.UUID("6f1d3c1e-0c4b-4b7e-9a51-2f0d5c3b8e10")

Go = Literal["send", "paused", "cancelled"]


@dataclass(frozen=True)
class Control:
    status: str
    run_token: str | None


def go_or_defer(control: Control | None, run_token: str) -> Go:
    """Send unless this run was paused or cancelled (or a later run replaced it) before the call."""
    if control is None:
        return "send"
    if control.status == "cancelled":
        return "cancelled"
    if control.run_token != run_token and control.run_token is not None and control.status != "paused":
        return "cancelled"  # superseded: a newer run owns the campaign now
    if control.status == "paused" and control.run_token == run_token:
        return "paused"
    return "send"


def outcome_event_id(batch_id: str, kind: str) -> str:
    """The same outcome of the same batch always has the same event id (re-emission is recognisable)."""
    return str(uuid.uuid5(OUTCOME_NAMESPACE, f"{batch_id}:{kind}"))


@dataclass(frozen=True)
class Prepared:
    messages: list[dict[str, Any]]
    parts: list[int]


def prepare(
    batch: BatchQueued,
    recipients: list[BatchRecipient],
    *,
    campaign_id: str,
    traffic_account: str,
    default_sender: str,
    links: LinkSettings,
) -> Prepared:
    """The provider request items, in the order the results will come back."""
    sender = batch.sender_id or default_sender
    marketing = batch.message_type == MessageType.MARKETING
    messages, parts = [], []
    for r in recipients:
        text = compose(
            batch.template,
            r.values,
            marketing=marketing,
            offer_link=link_url(links.base_url, "offer", make_token(links.secret, "offer", r.id))
            if marketing and batch.offer_url
            else None,
            unsubscribe_link=link_url(
                links.base_url, "unsubscribe", make_token(links.secret, "unsubscribe", r.id)
            )
            if marketing
            else None,
        )
        messages.append(
            {
                "trafficAccountId": traffic_account,
                "destination": r.phone,
                "sms": {"text": text, "sender": sender},
                "reference": f"{campaign_id}:{r.id}",
            }
        )
        parts.append(segments(text).parts)
    return Prepared(messages, parts)


def backoff_seconds(
    attempt: int, *, base: float, cap: float, retry_after: float | None, jitter: float
) -> float:
    """Full-jitter exponential backoff; never shorter than the provider's Retry-After. `jitter` in [0, 1)."""
    delay = min(cap, base * 2.0 ** (attempt - 1)) * jitter
    return max(delay, retry_after or 0.0)


def results_of_send(
    claimed: list[BatchRecipient],
    parts: list[int],
    accepted: Accepted,
    duplicates: dict[int, tuple[str, str]],
) -> tuple[RecipientResult, ...]:
    """Per-recipient results by array position, plus the suppressed duplicates."""
    out = [
        RecipientResult(id=r.id, phone=r.phone, message_id=item.message_id, parts=p, error=item.error)
        for r, p, item in zip(claimed, parts, accepted.items, strict=True)
    ]
    out += [
        RecipientResult(id=rid, phone=phone, error="already handed to the provider", duplicate_of=batch)
        for rid, (phone, batch) in duplicates.items()
    ]
    return tuple(out)
