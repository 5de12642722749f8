"""Reading sms.batches records: BatchQueued parsed straight from JSON into its model.

`shared.events.decode` parses to dicts, then validates; for a 5,000-recipient batch validating from the
JSON bytes in one pass is ~40% cheaper. Anything else (another type, an older version that needs upcasting,
bytes that do not validate) goes through `decode`, which upcasts or explains the failure.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from sender.outcomes import Cause
from shared.events import BatchQueued, DecodeError, decode
from shared.topics import SMS_BATCHES


class _QueuedEnvelope(BaseModel):
    """`shared.events.Envelope` with its payload typed as the current BatchQueued."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    version: int
    occurred_at: datetime
    tenant_id: str | None = None
    campaign_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None
    payload: BatchQueued


def decode_batch(raw: bytes) -> tuple[Cause, BatchQueued]:
    """The batch and what its outcomes refer to. Raises DecodeError (dead-letter it) for anything else."""
    try:
        env = _QueuedEnvelope.model_validate_json(raw)
        if env.type == "BatchQueued" and env.version == BatchQueued.VERSION:
            return _cause(
                env.event_id, env.correlation_id, env.tenant_id, env.campaign_id, env.payload
            ), env.payload
    except ValidationError:
        pass
    envelope, event = decode(raw)
    if not isinstance(event, BatchQueued):
        raise DecodeError(f"unexpected {envelope.type} on {SMS_BATCHES}")
    return _cause(
        envelope.event_id, envelope.correlation_id, envelope.tenant_id, envelope.campaign_id, event
    ), event


def _cause(
    event_id: str,
    correlation_id: str | None,
    tenant_id: str | None,
    campaign_id: str | None,
    batch: BatchQueued,
) -> Cause:
    # The batch id starts with the campaign id: {campaign}:{run_token}:{index}.
    return Cause(
        tenant_id, campaign_id or batch.batch_id.split(":", 1)[0], event_id, correlation_id or event_id
    )
