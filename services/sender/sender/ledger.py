"""Ledger transitions shared by the send path and the resolution of ambiguous batches.

Each runs inside the caller's transaction, with the batch lock (`locks.py`) held by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import cramjam

from sender import domain, outcomes, store
from sender.outcomes import Cause
from shared.db import Conn
from shared.events import BatchQueued, BatchRecipient
from shared.topics import SMS_OUTCOMES

INTERRUPTED = "sender stopped during the provider call"


def pack_event(raw: bytes) -> bytes:
    """The BatchQueued record as kept while its batch is ambiguous (lz4: about a tenth of the size)."""
    return bytes(cramjam.lz4.compress(raw))


def unpack_event(packed: bytes) -> bytes:
    return bytes(cramjam.lz4.decompress(packed))


def first_holders(recipients: Sequence[BatchRecipient], held: set[str]) -> list[BatchRecipient]:
    """Recipients whose phone the batch holds (the first one, should a phone appear twice)."""
    out: list[BatchRecipient] = []
    seen: set[str] = set()
    for r in recipients:
        if r.phone in held and r.phone not in seen:
            out.append(r)
            seen.add(r.phone)
    return out


async def still_held(conn: Conn, campaign_id: str, batch: BatchQueued) -> list[BatchRecipient]:
    """The batch's recipients whose phone it still holds without a final status of their own."""
    held = await store.held_by_batch(conn, campaign_id, batch.batch_id, [r.phone for r in batch.recipients])
    return first_holders(batch.recipients, held)


async def declare_interrupted(
    conn: Conn, cause: Cause, batch: BatchQueued, raw: bytes, reason: str, at: datetime
) -> int:
    """A claimed batch whose call may have happened and whose answer is lost becomes ambiguous.
    Returns how many recipients are ambiguous."""
    members = await still_held(conn, cause.campaign_id, batch)
    ids = [r.id for r in members]
    event = outcomes.ambiguous(batch.batch_id, batch.run_token, ids, reason, 0, cause=cause, at=at)
    await store.finish_batch(
        conn,
        batch.batch_id,
        "ambiguous" if ids else "resolved",
        event,
        error=reason,
        remaining=len(ids),
        batch_event=pack_event(raw) if ids else None,
        at=at,
    )
    await store.add_outbox(conn, SMS_OUTCOMES, cause.campaign_id, [event])
    return len(ids)


async def apply_resolution(
    conn: Conn,
    cause: Cause,
    batch_id: str,
    run_token: str,
    kind: str,
    resolution: domain.Resolution,
    *,
    remaining_before: int,
    bulk_id: str | None = None,
    retries: int = 0,
    at: datetime,
) -> int:
    """Record final results for some ambiguous recipients and emit BatchResolved. Returns how many
    recipients of the batch are still ambiguous (0: the batch is resolved)."""
    await store.mark_recipients(
        conn,
        cause.campaign_id,
        batch_id,
        accepted=resolution.accepted,
        rejected=resolution.rejected,
        abandoned=resolution.abandoned,
    )
    remaining = max(0, remaining_before - len(resolution.results))
    step = await store.settle_resolution(conn, batch_id, remaining, retries, at)
    event = outcomes.resolved(
        batch_id,
        run_token,
        kind,
        resolution.results,
        remaining,
        step=step,
        bulk_id=bulk_id,
        retry_count=retries,
        cause=cause,
        at=at,
    )
    await store.add_outbox(conn, SMS_OUTCOMES, cause.campaign_id, [event])
    return remaining
