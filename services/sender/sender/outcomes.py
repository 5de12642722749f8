"""The sender's events on sms.outcomes, encoded straight to bytes.

A BatchSent of a 5,000-recipient batch is 5,000 RecipientResults: building pydantic models and dumping
them twice (payload, then envelope) costs ~20 ms a batch, so these events are written as the plain JSON
those models produce and read back (a unit test decodes every builder's bytes with `shared.events.decode`).
Event ids are derived from the batch, so the same outcome always carries the same id and a re-emission is
recognisable.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchResolved,
    BatchSent,
    EnvelopeHead,
    Event,
)

OUTCOME_NAMESPACE = uuid.UUID("6f1d3c1e-0c4b-4b7e-9a51-2f0d5c3b8e10")

# The JSON shape of shared.events.RecipientResult.
ResultRow = dict[str, Any]


def result_row(
    rid: int,
    phone: str,
    *,
    message_id: str | None = None,
    parts: int = 1,
    error: str | None = None,
    duplicate_of: str | None = None,
) -> ResultRow:
    return {
        "id": rid,
        "phone": phone,
        "message_id": message_id,
        "parts": parts,
        "error": error,
        "duplicate_of": duplicate_of,
    }


def outcome_event_id(batch_id: str, kind: str) -> str:
    """Stable per (batch, kind): `kind` is the event type, with a step number for repeated resolutions."""
    return str(uuid.uuid5(OUTCOME_NAMESPACE, f"{batch_id}:{kind}"))


@dataclass(frozen=True)
class Cause:
    """What an outcome is about and what caused it: the BatchQueued envelope, or the operator's command."""

    tenant_id: str | None
    campaign_id: str
    causation_id: str | None
    correlation_id: str | None

    @classmethod
    def of(cls, envelope: EnvelopeHead, campaign_id: str) -> Cause:
        return cls(
            envelope.tenant_id,
            campaign_id,
            envelope.event_id,
            envelope.correlation_id or envelope.event_id,
        )


def encode_outcome(
    event_type: type[Event], payload: dict[str, Any], *, cause: Cause, at: datetime, step: int | None = None
) -> bytes:
    kind = event_type.__name__ if step is None else f"{event_type.__name__}:{step}"
    return orjson.dumps(
        {
            "event_id": outcome_event_id(payload["batch_id"], kind),
            "type": event_type.__name__,
            "version": event_type.VERSION,
            "occurred_at": at,
            "tenant_id": cause.tenant_id,
            "campaign_id": cause.campaign_id,
            "causation_id": cause.causation_id,
            "correlation_id": cause.correlation_id,
            "payload": payload,
        }
    )


def claimed(
    batch_id: str, run_token: str, recipient_ids: Sequence[int], *, cause: Cause, at: datetime
) -> bytes:
    payload = {"batch_id": batch_id, "run_token": run_token, "recipient_ids": recipient_ids, "claimed_at": at}
    return encode_outcome(BatchClaimed, payload, cause=cause, at=at)


def sent(
    batch_id: str,
    run_token: str,
    bulk_id: str | None,
    results: Sequence[ResultRow],
    retry_count: int,
    *,
    cause: Cause,
    at: datetime,
) -> bytes:
    payload = {
        "batch_id": batch_id,
        "run_token": run_token,
        "bulk_id": bulk_id,
        "results": results,
        "retry_count": retry_count,
        "sent_at": at,
    }
    return encode_outcome(BatchSent, payload, cause=cause, at=at)


def failed(
    batch_id: str,
    run_token: str,
    recipient_ids: Sequence[int],
    error: str,
    retry_count: int,
    *,
    cause: Cause,
    at: datetime,
) -> bytes:
    payload = {
        "batch_id": batch_id,
        "run_token": run_token,
        "recipient_ids": recipient_ids,
        "error": error,
        "retry_count": retry_count,
        "failed_at": at,
    }
    return encode_outcome(BatchFailed, payload, cause=cause, at=at)


def ambiguous(
    batch_id: str,
    run_token: str,
    recipient_ids: Sequence[int],
    reason: str,
    retry_count: int,
    *,
    cause: Cause,
    at: datetime,
) -> bytes:
    payload = {
        "batch_id": batch_id,
        "run_token": run_token,
        "recipient_ids": recipient_ids,
        "reason": reason,
        "retry_count": retry_count,
        "at": at,
    }
    return encode_outcome(BatchAmbiguous, payload, cause=cause, at=at)


def deferred(
    batch_id: str, run_token: str, recipient_ids: Sequence[int], reason: str, *, cause: Cause, at: datetime
) -> bytes:
    payload = {
        "batch_id": batch_id,
        "run_token": run_token,
        "recipient_ids": recipient_ids,
        "reason": reason,
        "at": at,
    }
    return encode_outcome(BatchDeferred, payload, cause=cause, at=at)


def resolved(
    batch_id: str,
    run_token: str,
    resolution: str,
    results: Sequence[ResultRow],
    remaining: int,
    *,
    step: int,
    bulk_id: str | None = None,
    retry_count: int = 0,
    cause: Cause,
    at: datetime,
) -> bytes:
    payload = {
        "batch_id": batch_id,
        "run_token": run_token,
        "resolution": resolution,
        "bulk_id": bulk_id,
        "results": results,
        "remaining": remaining,
        "retry_count": retry_count,
        "resolved_at": at,
    }
    return encode_outcome(BatchResolved, payload, cause=cause, at=at, step=step)
