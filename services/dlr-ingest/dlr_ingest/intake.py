"""Reading sms.batches records for the link catalogue: of a BatchQueued only what a link needs.

The catalogue keeps a batch's id, offer URL and each recipient's id and phone. Validating just those from the
JSON bytes, with each recipient a plain dict, costs about a third of `shared.events.decode`, which builds a
model per recipient and its `values`. Anything else takes `decode`: another event type, an older version
to upcast, bytes that do not validate (which `decode` turns into the DecodeError that dead-letters them).
"""

from __future__ import annotations

from pydantic import ConfigDict, ValidationError
from typing_extensions import TypedDict

from shared.events import BatchQueued, EnvelopeHead, Event, decode


class LinkRecipient(TypedDict):
    """A recipient as a link needs it. A dict, not a model: building a model per recipient cost more than
    reading the whole batch did otherwise."""

    id: int
    phone: str


class BatchLinks(Event):
    """The current BatchQueued seen through what the catalogue keeps. Its other fields (the template,
    `values`) are the sender's to judge and are skipped unread."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    batch_id: str
    offer_url: str | None = None
    recipients: tuple[LinkRecipient, ...]


class _BatchLinksEnvelope(EnvelopeHead):
    payload: BatchLinks


def read_batch(raw: bytes) -> tuple[EnvelopeHead, Event]:
    """A sms.batches record: (head, BatchLinks) for a BatchQueued at its current version, else what
    `decode` makes of it (an upcast BatchQueued, or another event the catalogue ignores).
    Raises DecodeError for what cannot be decoded."""
    try:
        envelope = _BatchLinksEnvelope.model_validate_json(raw)
    except ValidationError:
        return decode(raw)
    if envelope.type != "BatchQueued" or envelope.version != BatchQueued.VERSION:
        return decode(raw)
    return envelope, envelope.payload
