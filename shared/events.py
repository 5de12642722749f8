"""Event contracts: one envelope for every event, versioned payload models, upcasters, encode/decode.

Events are immutable facts. A change of payload shape adds a version and an upcaster that lifts the raw
dict of version N to N+1; stored events are never rewritten. Readers are deployed before writers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model


class DecodeError(Exception):
    """The bytes are not an event this reader understands; dead-letter it, never retry."""


class Event(BaseModel):
    """Base of every payload model: frozen, with its type name and current version."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    VERSION: ClassVar[int] = 1


class EnvelopeHead(BaseModel):
    """The envelope without its payload: what a reader keeps once the payload is validated into its model."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    version: int
    occurred_at: datetime
    tenant_id: str | None = None
    campaign_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None


class Envelope(EnvelopeHead):
    """An event as it is written: the head and the payload as plain data."""

    payload: dict[str, Any]


# --- statuses shared by several services -------------------------------------------------------------


class Channel(StrEnum):
    RETAIL = "retail"
    SHOPIFY = "shopify"


class MessageType(StrEnum):
    MARKETING = "marketing"
    SERVICE = "service"


class DeliveryStatus(StrEnum):
    """Mapped provider status. `unknown` keeps the raw value and is never final."""

    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    UNKNOWN = "unknown"


class RunKind(StrEnum):
    INITIAL = "initial"
    RESUME = "resume"
    RETRY_FAILED = "retry_failed"


# --- tenant.events -----------------------------------------------------------------------------------


class TenantRegistered(Event):
    name: str
    channel: Channel
    default_region: str
    sender_id: str | None = None


class ApiKeyIssued(Event):
    key_id: str
    key_hash: str  # sha256 hex of the key; the key itself is never in the log


class ApiKeyRevoked(Event):
    key_id: str


class SubscriptionChanged(Event):
    status: Literal["active", "inactive"]


class CreditsToppedUp(Event):
    """Credits added to a tenant's balance (purchase, grant); `reference` is the caller's, e.g. an invoice."""

    credits: int
    reference: str | None = None


# --- campaign.events ---------------------------------------------------------------------------------


class CampaignCreated(Event):
    name: str
    text: str
    sender_id: str | None
    message_type: MessageType
    channel: Channel
    created_at: datetime
    offer_url: str | None = None


class CampaignUpdated(Event):
    name: str
    text: str
    sender_id: str | None
    message_type: MessageType
    updated_at: datetime
    offer_url: str | None = None


class CampaignScheduled(Event):
    scheduled_at: datetime


class CampaignEnqueued(Event):
    run_token: str
    run_kind: RunKind
    total: int  # recipients in this run
    campaign_total: int  # recipients materialised for the campaign so far
    batch_count: int
    batch_size: int
    credits_reserved: int
    started_at: datetime


class CampaignPaused(Event):
    run_token: str
    paused_at: datetime


class CampaignResumed(Event):
    run_token: str  # the paused run; the resume itself arrives as a new CampaignEnqueued
    resumed_at: datetime


class CampaignCancelled(Event):
    run_token: str | None
    cancelled_at: datetime


class CampaignCompleted(Event):
    run_token: str
    accepted: int
    failed: int
    finished_at: datetime


class CampaignFailed(Event):
    run_token: str | None
    reason: str
    failed: int
    finished_at: datetime


class CampaignEnqueueRefused(Event):
    """A scheduled send or a pending resume could not start (credits, subscription, audience); the campaign
    keeps its status and the tenant sees why."""

    code: str
    message: str
    refused_at: datetime


class CreditsReserved(Event):
    run_token: str
    credits: int


class CreditsDebited(Event):
    run_token: str
    credits: int


class CreditsReleased(Event):
    run_token: str
    credits: int


# --- sms.batches -------------------------------------------------------------------------------------


class BatchRecipient(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    phone: str
    values: dict[str, str] = Field(default_factory=dict)


class BatchQueued(Event):
    """Everything the sender needs: the template plus per-recipient values (rendered by `shared.sms`)."""

    batch_id: str  # {campaign}:{run_token}:{index}, deterministic
    run_token: str
    batch_no: int
    sender_id: str | None
    template: str
    message_type: MessageType
    recipients: tuple[BatchRecipient, ...]
    offer_url: str | None = None  # marketing messages then carry a per-recipient tracked offer link


# --- sms.outcomes ------------------------------------------------------------------------------------


class RecipientResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    phone: str
    message_id: str | None = None
    parts: int = 1
    error: str | None = None
    duplicate_of: str | None = None  # suppressed: this phone was already handed over by that batch


class BatchClaimed(Event):
    """The sender owns the batch and is about to call the provider: its recipients are processing."""

    batch_id: str
    run_token: str
    recipient_ids: tuple[int, ...]
    claimed_at: datetime


class BatchSent(Event):
    batch_id: str
    run_token: str
    bulk_id: str | None
    results: tuple[RecipientResult, ...]
    retry_count: int
    sent_at: datetime


class BatchFailed(Event):
    """The provider refused the whole batch (it did not accept any item); nothing was sent."""

    batch_id: str
    run_token: str
    recipient_ids: tuple[int, ...]
    error: str
    retry_count: int
    failed_at: datetime


class BatchAmbiguous(Event):
    """The provider may have accepted the batch (5xx, read timeout, crash after the call): never resent."""

    batch_id: str
    run_token: str
    recipient_ids: tuple[int, ...]
    reason: str
    retry_count: int
    at: datetime


class BatchDeferred(Event):
    """Not sent because its run was paused or cancelled before the provider call."""

    batch_id: str
    run_token: str
    recipient_ids: tuple[int, ...]
    reason: Literal["paused", "cancelled", "superseded"]
    at: datetime


class BatchResolved(Event):
    """Final results for recipients of an ambiguous batch (BatchAmbiguous), which hold their run until then.

    `resolution` says how they became known: `provider_answer` (the provider's answer arrived after the
    batch had been declared ambiguous), `status_lookup` (message ids were known and looked up),
    `operator_fail` (an operator declared them failed; they may have been delivered and are never sent
    again) or `operator_resend` (an operator decided the batch did not go out and it was sent again).
    A result with `message_id` was accepted; one without failed with `error`. A batch may be resolved in
    several steps: `remaining` recipients of it are still ambiguous after this event (0 = settled).
    """

    batch_id: str
    run_token: str
    resolution: Literal["provider_answer", "status_lookup", "operator_fail", "operator_resend"]
    bulk_id: str | None = None
    results: tuple[RecipientResult, ...]
    remaining: int
    retry_count: int = 0
    resolved_at: datetime


# --- delivery.reports --------------------------------------------------------------------------------


class DeliveryReported(Event):
    provider_message_id: str
    raw_status: str
    status: DeliveryStatus
    error: str | None = None
    provider_time: datetime | None = None
    received_at: datetime
    source: Literal["webhook", "refresh"]


# --- engagement.events -------------------------------------------------------------------------------


class LinkClicked(Event):
    recipient_id: int
    link: Literal["offer"]
    clicked_at: datetime


class ContactUnsubscribed(Event):
    recipient_id: int
    phone: str
    unsubscribed_at: datetime


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
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
        CampaignResumed,
        CampaignCancelled,
        CampaignCompleted,
        CampaignFailed,
        CampaignEnqueueRefused,
        CreditsReserved,
        CreditsDebited,
        CreditsReleased,
        BatchQueued,
        BatchClaimed,
        BatchSent,
        BatchFailed,
        BatchAmbiguous,
        BatchDeferred,
        BatchResolved,
        DeliveryReported,
        LinkClicked,
        ContactUnsubscribed,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version N) -> function lifting the raw payload of version N to N+1. Empty while every event is v1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def new_event_id() -> str:
    return str(uuid.uuid4())


def envelope_for(
    event: Event,
    *,
    occurred_at: datetime,
    tenant_id: str | None,
    campaign_id: str | None = None,
    event_id: str | None = None,
    caused_by: EnvelopeHead | None = None,
) -> Envelope:
    """Wrap a payload; `caused_by` carries the correlation id along a chain of events."""
    return Envelope(
        event_id=event_id or new_event_id(),
        type=type(event).__name__,
        version=type(event).VERSION,
        occurred_at=occurred_at,
        tenant_id=tenant_id,
        campaign_id=campaign_id,
        causation_id=caused_by.event_id if caused_by else None,
        correlation_id=(caused_by.correlation_id or caused_by.event_id) if caused_by else None,
        payload=event.model_dump(mode="json"),
    )


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="json"))


class _CurrentEnvelope(EnvelopeHead):
    """An envelope of an event at its current version, with the payload validated into its model."""

    payload: Event


# Types built from values known only at run time (the event names and versions).
_literal: Any = Literal
_union: Any = Union


def _current_envelope(name: str, model: type[Event]) -> type[_CurrentEnvelope]:
    return create_model(
        f"Current{name}",
        __base__=_CurrentEnvelope,
        type=(_literal[name], ...),
        version=(_literal[model.VERSION], ...),
        payload=(model, ...),
    )


# Every current event type, told apart by `type`: validated straight from the JSON bytes in one pass, with
# no intermediate dicts (a 5,000-recipient batch ~20 % cheaper to read, a delivery report ~45 %).
_any_current: Any = Annotated[
    _union[tuple(_current_envelope(n, m) for n, m in EVENT_TYPES.items())], Field(discriminator="type")
]
_CURRENT: TypeAdapter[_CurrentEnvelope] = TypeAdapter(_any_current)


def decode(raw: bytes) -> tuple[EnvelopeHead, Event]:
    """Parse, upcast and validate. Every failure becomes one `DecodeError` with the reason.

    An event at its current version is validated in one pass; anything else (an older version to upcast,
    bytes that do not validate) takes the general path, which upcasts or explains the failure."""
    try:
        current = _CURRENT.validate_json(raw)
    except ValidationError:
        return _decode_in_steps(raw)
    return current, current.payload


def _decode_in_steps(raw: bytes) -> tuple[Envelope, Event]:
    try:
        envelope = Envelope.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise DecodeError(f"not an event envelope: {_first_line(exc)}") from exc
    model = EVENT_TYPES.get(envelope.type)
    if model is None:
        raise DecodeError(f"unknown event type {envelope.type!r}")
    if envelope.version > model.VERSION:
        raise DecodeError(f"{envelope.type} v{envelope.version} is newer than this reader (v{model.VERSION})")
    payload, version = envelope.payload, envelope.version
    try:
        while version < model.VERSION:
            payload = UPCASTERS[(envelope.type, version)](payload)
            version += 1
        return envelope, model.model_validate(payload)
    except (KeyError, ValidationError) as exc:
        raise DecodeError(f"invalid {envelope.type} v{envelope.version}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
