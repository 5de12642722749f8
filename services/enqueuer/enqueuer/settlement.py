"""What the enqueuer does with what it consumes: batch outcomes settle runs and credits (sms.outcomes);
unsubscribes opt contacts out (engagement.events). Each runs inside the consumer's transaction."""

from __future__ import annotations

from datetime import datetime

from enqueuer import domain
from enqueuer.messages import campaign_event
from enqueuer.store import campaigns as campaign_store
from enqueuer.store import contacts as contact_store
from enqueuer.store import runs as run_store
from enqueuer.store import tenants as tenant_store
from shared import db
from shared.db import Conn
from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchResolved,
    BatchSent,
    ContactUnsubscribed,
    EnvelopeHead,
    Event,
)


async def apply(conn: Conn, envelope: EnvelopeHead, event: Event) -> None:
    if isinstance(event, BatchClaimed):
        await run_store.mark_batch_claimed(conn, event.batch_id, envelope.occurred_at)
    elif isinstance(event, BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred | BatchResolved):
        await apply_outcome(conn, envelope, event)
    elif isinstance(event, ContactUnsubscribed):
        await apply_unsubscribe(conn, envelope, event)


async def apply_outcome(
    conn: Conn,
    envelope: EnvelopeHead,
    event: BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred | BatchResolved,
) -> None:
    """Settle a batch outcome into its run (once; an ambiguous batch may be resolved later, in one or several
    BatchResolved steps), move the credits and finish the run when it is over. Outcomes of batches this
    enqueuer never planned are ignored."""
    found = await run_store.load_batch(conn, event.batch_id)
    if found is None:
        return
    run_token, batch = found
    run = await run_store.load_run(conn, run_token)
    assert run is not None, f"run {run_token} of batch {event.batch_id} is missing"
    tenant_id = await run_store.run_tenant(conn, run_token)
    if isinstance(event, BatchResolved):
        if batch.status != "ambiguous":
            return
        still = await run_store.ambiguous_recipients(conn, run.campaign_id, [r.id for r in event.results])
        outcome = domain.resolution_outcome(event, still)
    else:
        outcome = domain.outcome_of(event)
    at = envelope.occurred_at
    available = 0
    if outcome.accepted_parts and not run.reservation_open:
        available = (await tenant_store.load_credits(conn, tenant_id, lock=True)).available
    settlement = domain.settle_batch(
        run,
        batch,
        outcome,
        campaign_accepted_before=await run_store.campaign_accepted(conn, run.campaign_id),
        credits_available=available,
        at=at,
    )
    if settlement is None:
        return
    status, ambiguous_left = domain.batch_status_after(batch, outcome)
    await run_store.settle_batch(
        conn,
        event.batch_id,
        status,
        len(outcome.accepted_ids),
        len(outcome.failed_ids),
        ambiguous_left,
        settlement.batch_debited + settlement.late_charge,
        at,
    )
    await run_store.set_recipient_state(conn, run.campaign_id, outcome.accepted_ids, "sent")
    await run_store.set_recipient_state(conn, run.campaign_id, outcome.failed_ids, domain.failed_state(event))
    await run_store.set_recipient_state(conn, run.campaign_id, outcome.ambiguous_ids, "ambiguous")
    await _move_credits(conn, tenant_id, run, settlement, at)
    await run_store.save_run(conn, settlement.run, at, settlement.finished)
    if settlement.campaign_status:
        await campaign_store.finish(conn, run.campaign_id, run.token, settlement.campaign_status, at)
    await db.add_outbox(
        conn,
        [campaign_event(e, run.campaign_id, tenant_id, at, caused_by=envelope) for e in settlement.events],
    )


async def _move_credits(
    conn: Conn, tenant_id: str, before: domain.Run, settlement: domain.Settlement, at: datetime
) -> None:
    if settlement.late_charge:
        reserved = await tenant_store.reserve(conn, tenant_id, settlement.late_charge, before.token, at)
        assert reserved, "a late charge is never more than the available balance read under the same lock"
        await tenant_store.debit(conn, tenant_id, settlement.late_charge, before.token, at)
    await tenant_store.debit(conn, tenant_id, settlement.batch_debited, before.token, at)
    released = settlement.run.credits_released - before.credits_released
    await tenant_store.release(conn, tenant_id, released, before.token, at)


async def expire_reservation(conn: Conn, run: domain.Run, tenant_id: str, at: datetime) -> int:
    """Release what a run still holds once its reservation expired (a run stuck with ambiguous batches);
    a later acceptance is then charged from the available balance."""
    closed, events = domain.close_reservation(run)
    released = closed.credits_released - run.credits_released
    await tenant_store.release(conn, tenant_id, released, run.token, at)
    await run_store.save_run(conn, closed, at, finished=False)
    await db.add_outbox(conn, [campaign_event(e, run.campaign_id, tenant_id, at) for e in events])
    return released


async def apply_unsubscribe(conn: Conn, envelope: EnvelopeHead, event: ContactUnsubscribed) -> None:
    """Opt out the contact with the recipient's tenant and phone; excluded from every later enqueue."""
    at = event.unsubscribed_at
    if await contact_store.opt_out_recipient(conn, event.recipient_id, at):
        return
    if envelope.tenant_id and await tenant_store.load_tenant(conn, envelope.tenant_id) is not None:
        await contact_store.opt_out_phone(conn, envelope.tenant_id, event.phone, at)
