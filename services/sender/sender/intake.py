"""Reading sms.batches records: a BatchQueued and what its outcomes refer to."""

from __future__ import annotations

from sender.outcomes import Cause
from shared.events import BatchQueued, DecodeError, decode
from shared.topics import SMS_BATCHES


def decode_batch(raw: bytes) -> tuple[Cause, BatchQueued]:
    """The batch and what its outcomes refer to. Raises DecodeError (dead-letter it) for anything else."""
    envelope, event = decode(raw)
    if not isinstance(event, BatchQueued):
        raise DecodeError(f"unexpected {envelope.type} on {SMS_BATCHES}")
    # The batch id starts with the campaign id: {campaign}:{run_token}:{index}.
    return Cause.of(envelope, envelope.campaign_id or event.batch_id.split(":", 1)[0]), event
