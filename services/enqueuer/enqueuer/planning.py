"""Starting a run: gate, materialise, price, plan fixed batches, reserve credits, all in one transaction.

A new campaign's audience is copied into recipients while its batches are encoded from the same stream
(`store.copying`); later runs read their recipients back a chunk per round trip (`plan_batches`). Either way
each message is priced (one credit per SMS part of its final text) and every batch lands in the outbox as a
pre-encoded BatchQueued (`batches`). Either the campaign is `sending` with every batch and its credit
reservation written, or nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from enqueuer import domain
from enqueuer.batches import BatchText, BatchWriter, CopyRowsEncoder, encode_batch, recipient_json
from enqueuer.domain import Refused, Run
from enqueuer.messages import campaign_event
from enqueuer.pricing import Pricer, TextShape
from enqueuer.store import campaigns as campaign_store
from enqueuer.store import contacts as contact_store
from enqueuer.store import copying
from enqueuer.store import runs as run_store
from enqueuer.store import tenants as tenant_store
from shared import db
from shared.db import Conn
from shared.events import (
    CampaignCompleted,
    CampaignEnqueued,
    CampaignFailed,
    CampaignResumed,
    CreditsReserved,
    Event,
    MessageType,
    RunKind,
    encode,
)
from shared.sms import placeholder_names
from shared.topics import CAMPAIGN_EVENTS, SMS_BATCHES

READER_WAIT_S = 1.0  # for the audience copy's second connection; then INSERT ... SELECT on this one


@dataclass(frozen=True)
class PlanSettings:
    batch_size: int
    max_batch_bytes: int
    links_base_url: str
    reservation_ttl: timedelta


@dataclass(frozen=True)
class Enqueued:
    campaign_id: str
    run_token: str
    kind: RunKind
    queued: int
    batches: int
    credits: int
    available: int

    def body(self) -> dict[str, Any]:
        """The seed's enqueue contract, plus the run token and the cost."""
        return {
            "ok": True,
            "queued": self.queued,
            "enqueuedJobs": self.batches,
            "campaignId": self.campaign_id,
            "status": "sending",
            "runToken": self.run_token,
            "runKind": self.kind.value,
            "cost": {"credits": self.credits, "available": self.available},
        }


async def start_sending(
    conn: Conn,
    campaign: campaign_store.Campaign,
    plan: PlanSettings,
    at: datetime,
    *,
    readers: asyncpg.Pool | None = None,
) -> tuple[int, dict[str, Any]]:
    """Enqueue a campaign the caller holds locked: the seed's checks in its order, then a run.
    A paused campaign resumes (see `resume_locked`). `readers`: where to borrow the second connection that
    copies a new campaign's audience (see `store.copying`); without one, INSERT ... SELECT."""
    domain.check_transition("enqueue", campaign.status)
    tenant = await tenant_store.load_tenant(conn, campaign.tenant_id)
    assert tenant is not None
    check_subscription(tenant)
    if not campaign.text.strip():
        raise Refused(400, "NO_MESSAGE_TEXT", "The campaign has no message text.")
    if campaign.status == "paused":
        return await resume_locked(conn, tenant, campaign, plan, at)
    marketing = campaign.message_type == MessageType.MARKETING.value
    placeholders = sorted(placeholder_names(campaign.text))
    if campaign.audience is None:
        if await campaign_store.inline_audience_size(conn, campaign.id) == 0:
            raise Refused(
                400,
                "NO_TARGET_AUDIENCE",
                "The campaign has neither recipients nor an audience (list, segment or all).",
            )
        spec = None
        source = copying.inline_source(campaign.id, tenant.id)
    else:
        spec = await resolve_audience(conn, tenant.id, campaign.audience)
        source = copying.contacts_source(
            campaign.id, tenant.id, spec, marketing=marketing, placeholders=placeholders
        )
    # A campaign is materialised once, by the enqueue that takes it out of draft or scheduled; recipients
    # found already (never, unless a run was planned by hand) are kept and counted, not duplicated.
    fresh = not await run_store.has_recipients(conn, campaign.id)
    if fresh:
        async with copying.reader_connection(readers, READER_WAIT_S) as reader:
            if reader is not None:
                result = await plan_run(
                    conn, tenant, campaign, RunKind.INITIAL, "queued", plan, at, copied_from=(reader, source)
                )
                return 200, result.body()
    if spec is None:
        created = await run_store.materialise_inline(conn, campaign.id, tenant.id, fresh=fresh)
    else:
        created = await contact_store.materialise_from_contacts(
            conn,
            campaign.id,
            tenant.id,
            spec,
            marketing=marketing,
            placeholders=placeholders,
            fresh=fresh,
        )
    result = await plan_run(
        conn, tenant, campaign, RunKind.INITIAL, "queued", plan, at, known_total=created if fresh else None
    )
    return 200, result.body()


def check_subscription(tenant: tenant_store.Tenant) -> None:
    if tenant.subscription_status != "active":
        raise Refused(403, "SUBSCRIPTION_REQUIRED", "An active subscription is required to send campaigns.")


async def resolve_audience(conn: Conn, tenant_id: str, audience: dict[str, Any]) -> dict[str, Any]:
    """The stored audience with a segment replaced by its filter; a list or segment must still exist."""
    if audience["kind"] == "segment":
        segment = await contact_store.load_segment(conn, tenant_id, audience["segment_id"])
        if segment is None:
            raise Refused(400, "NO_TARGET_AUDIENCE", "The campaign's segment no longer exists.")
        return {"kind": "filter", "filter": segment["filter"]}
    if (
        audience["kind"] == "list"
        and await contact_store.load_list(conn, tenant_id, audience["list_id"]) is None
    ):
        raise Refused(400, "NO_TARGET_AUDIENCE", "The campaign's list no longer exists.")
    return audience


async def resume_locked(
    conn: Conn,
    tenant: tenant_store.Tenant,
    campaign: campaign_store.Campaign,
    plan: PlanSettings,
    at: datetime,
) -> tuple[int, dict[str, Any]]:
    """Resume a paused campaign: a new run over the recipients still queued, once every batch of the paused
    run has an outcome (a batch already in flight when the pause arrived may still be sent). Until then
    the resume is recorded (202) and the scheduler loop plans it when the paused run has settled."""
    paused = await run_store.load_run(conn, campaign.run_token, lock=False) if campaign.run_token else None
    if paused is not None and not domain.run_settled(paused):
        await campaign_store.request_resume(conn, campaign.id, at)
        return 202, {
            "ok": True,
            "queued": 0,
            "enqueuedJobs": 0,
            "campaignId": campaign.id,
            "status": "paused",
            "resuming": True,
            "message": "The paused run still has batches on their way; the campaign resumes when they settle.",
        }
    if await run_store.count_recipients(conn, campaign.id, "queued") == 0 and paused is not None:
        return 200, await _finish_resumed_without_work(conn, campaign, paused, at)
    resumed: list[Event] = [CampaignResumed(run_token=paused.token, resumed_at=at)] if paused else []
    result = await plan_run(conn, tenant, campaign, RunKind.RESUME, "queued", plan, at, before=resumed)
    return 200, result.body()


async def _finish_resumed_without_work(
    conn: Conn, campaign: campaign_store.Campaign, paused: Run, at: datetime
) -> dict[str, Any]:
    """Every recipient was sent before the pause took effect: the campaign ends as its run would have."""
    accepted = await run_store.campaign_accepted(conn, campaign.id)
    event: Event
    if accepted:
        status = "completed"
        event = CampaignCompleted(
            run_token=paused.token, accepted=paused.accepted, failed=paused.failed, finished_at=at
        )
    else:
        status = "failed"
        event = CampaignFailed(
            run_token=paused.token, reason="every recipient failed", failed=paused.failed, finished_at=at
        )
    await campaign_store.set_status(conn, campaign.id, status, at, finished=True)
    await db.add_outbox(conn, [campaign_event(event, campaign.id, campaign.tenant_id, at)])
    return {"ok": True, "queued": 0, "enqueuedJobs": 0, "campaignId": campaign.id, "status": status}


async def plan_run(
    conn: Conn,
    tenant: tenant_store.Tenant,
    campaign: campaign_store.Campaign,
    kind: RunKind,
    source_state: str,
    plan: PlanSettings,
    at: datetime,
    *,
    before: list[Event] | None = None,
    known_total: int | None = None,
    copied_from: tuple[Conn, copying.SourceQuery] | None = None,
) -> Enqueued:
    """Plan a run over the campaign's recipients in `source_state` (queued, or failed for a retry).
    `known_total`: the campaign was just materialised with that many recipients, all queued (no count).
    `copied_from`: a new campaign's recipients are to be copied from this source (on this connection) and
    planned as they stream by, instead of being read back."""
    marketing = campaign.message_type == MessageType.MARKETING.value
    pricer = Pricer(TextShape(campaign.text, marketing, bool(campaign.offer_url), plan.links_base_url))
    run_token = uuid.uuid4().hex[:16]
    writer = BatchWriter(campaign, tenant, run_token, pricer, plan.max_batch_bytes, at)
    with copying.batch_spool(SMS_BATCHES, writer.key) as spool:
        if copied_from is not None:
            encoder = CopyRowsEncoder(writer, spool, plan.batch_size)
            await copying.copy_into_recipients(conn, *copied_from, encoder)
            encoder.finish()
            total = writer.recipients
        elif known_total is not None:
            total = known_total
        else:
            total = await run_store.count_recipients(conn, campaign.id, source_state)
        if total == 0:
            what = (
                "failed recipients to retry (recipients an operator failed out of an ambiguous batch are"
                " never sent again)"
                if source_state == "failed"
                else "eligible recipients"
            )
            raise Refused(400, "NO_RECIPIENTS", f"The campaign has no {what}.")
        credits = await tenant_store.load_credits(conn, tenant.id)
        if pricer.fixed is not None and pricer.fixed * total > credits.available:
            raise _insufficient(pricer.fixed * total, credits.available)
        if before:
            await db.add_outbox(conn, [campaign_event(e, campaign.id, tenant.id, at) for e in before])
        # Reserve the places of CampaignEnqueued and CreditsReserved ahead of the batches, so that they are
        # published first; their contents (batch count, credits) are known only after the batches.
        enqueued_slot, reserved_slot = await run_store.add_outbox_raw(
            conn, [(CAMPAIGN_EVENTS, writer.key, b"{}"), (CAMPAIGN_EVENTS, writer.key, b"{}")]
        )
        # The run's row comes before its batches (their foreign key); counts and credits are filled in below.
        await run_store.start_run(
            conn,
            run_store.RunPlan(
                Run(run_token, campaign.id, total, 0, reservation_open=True),
                tenant.id,
                kind.value,
                plan.batch_size,
                campaign.text,
                writer.sender_id,
                campaign.message_type,
                campaign.offer_url,
                at + plan.reservation_ttl,
            ),
            at,
        )
        if copied_from is not None:
            await spool.write(conn, run_token)
        else:
            await plan_batches(conn, writer, source_state, plan.batch_size)
    needed, total = writer.cost, writer.recipients
    if source_state == "failed":
        await run_store.requeue_failed(conn, campaign.id)
    if not await tenant_store.reserve(conn, tenant.id, needed, run_token, at):
        raise _insufficient(needed, (await tenant_store.load_credits(conn, tenant.id)).available)
    await run_store.finish_run_plan(conn, run_token, total, writer.batches, needed)
    await campaign_store.mark_sending(conn, campaign.id, run_token, at)
    new_campaign = known_total is not None or copied_from is not None
    campaign_total = total if new_campaign else await run_store.count_recipients(conn, campaign.id)
    enqueued = CampaignEnqueued(
        run_token=run_token,
        run_kind=kind,
        total=total,
        campaign_total=campaign_total,
        batch_count=writer.batches,
        batch_size=plan.batch_size,
        credits_reserved=needed,
        started_at=at,
    )
    for slot, event in (
        (enqueued_slot, enqueued),
        (reserved_slot, CreditsReserved(run_token=run_token, credits=needed)),
    ):
        await run_store.rewrite_outbox(
            conn, slot, encode(campaign_event(event, campaign.id, tenant.id, at).envelope)
        )
    await run_store.notify_outbox(conn)
    available = (
        credits.available - needed
        if pricer.fixed is not None
        else (await tenant_store.load_credits(conn, tenant.id)).available
    )
    return Enqueued(campaign.id, run_token, kind, total, writer.batches, needed, available)


async def plan_batches(conn: Conn, writer: BatchWriter, source_state: str, batch_size: int) -> None:
    """Walk the recipients a chunk of `batch_size` at a time, two cores at work: each round trip carries the
    batches encoded from the chunk before and brings the next chunk, and this process encodes a chunk while
    PostgreSQL writes the previous one and reads the next. At most two chunks are in memory."""
    campaign_id = writer.campaign.id
    async with run_store.index_order_walk(conn):
        step = asyncio.ensure_future(
            run_store.plan_step(
                conn, campaign_id, source_state, "", batch_size, writer.run_token, writer.take()
            )
        )
        try:
            while (chunk := await step) is not None:
                step = asyncio.ensure_future(
                    run_store.plan_step(
                        conn,
                        campaign_id,
                        source_state,
                        chunk.last_phone,
                        batch_size,
                        writer.run_token,
                        writer.take(),
                    )
                )
                await asyncio.sleep(0)  # the query is on its way before the encoding below holds the loop
                writer.add_chunk(chunk)
            await run_store.plan_step(conn, campaign_id, source_state, "", 0, writer.run_token, writer.take())
        finally:
            if not step.done():  # encoding failed: let the query finish before the transaction rolls back
                with contextlib.suppress(Exception):
                    await step


def _insufficient(needed: int, available: int) -> Refused:
    return Refused(
        402,
        "INSUFFICIENT_CREDITS",
        f"Sending needs {needed} credits (one per SMS part); {available} are available.",
        needed=needed,
        available=available,
    )


async def republish_stuck(conn: Conn, stuck: run_store.StuckRun, at: datetime) -> int:
    """Publish again the batches of a quiet run that the sender never claimed: same ids, same contents
    (the run's own text and the recipients' stored values). The sender deduplicates by batch id."""
    batches = await run_store.unclaimed_batches(conn, stuck.token)
    rows: list[tuple[str, bytes, bytes]] = []
    for b in batches:
        recipients = await run_store.recipients_by_id(conn, b["recipient_ids"])
        items = ",".join(recipient_json(r[0], r[1], r[2]) for r in recipients)
        text = BatchText(
            stuck.campaign_id,
            stuck.tenant_id,
            stuck.template,
            stuck.message_type,
            stuck.sender_id,
            stuck.offer_url,
        )
        value = encode_batch(text, b["batch_id"], stuck.token, b["batch_no"], f"[{items}]", at)
        rows.append((SMS_BATCHES, stuck.campaign_id.encode(), value))
    if rows:
        await run_store.add_outbox_raw(conn, rows)
    await run_store.note_republished(conn, stuck.token, at)
    return len(rows)
