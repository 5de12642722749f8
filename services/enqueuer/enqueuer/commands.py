"""The enqueuer's use cases: load, decide (domain), write state and outbox events in one transaction."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from enqueuer import domain, store
from enqueuer.domain import Refused, Run
from shared import db
from shared.db import Conn
from shared.events import (
    ApiKeyIssued,
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchRecipient,
    BatchSent,
    CampaignCreated,
    CampaignEnqueued,
    Channel,
    Envelope,
    Event,
    MessageType,
    RunKind,
    TenantRegistered,
    envelope_for,
)
from shared.topics import CAMPAIGN_EVENTS, SMS_BATCHES, TENANT_EVENTS


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def campaign_event(
    event: Event, campaign_id: str, tenant_id: str, at: datetime, caused_by: Envelope | None = None
) -> db.OutboxMessage:
    return db.OutboxMessage(
        CAMPAIGN_EVENTS,
        campaign_id,
        envelope_for(
            event, occurred_at=at, tenant_id=tenant_id, campaign_id=campaign_id, caused_by=caused_by
        ),
    )


@dataclass(frozen=True)
class NewTenant:
    tenant: store.Tenant
    api_key: str


async def register_tenant(
    pool: asyncpg.Pool,
    *,
    name: str,
    channel: Channel,
    default_region: str,
    sender_id: str | None,
    at: datetime,
) -> NewTenant:
    tenant = store.Tenant(str(uuid.uuid4()), name, channel.value, default_region.upper(), sender_id, "active")
    api_key = f"sk_{secrets.token_urlsafe(32)}"
    key_id = f"key_{secrets.token_hex(8)}"
    events = [
        TenantRegistered(
            name=name, channel=channel, default_region=tenant.default_region, sender_id=sender_id
        ),
        ApiKeyIssued(key_id=key_id, key_hash=hash_key(api_key)),
    ]
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_tenant(conn, tenant, at)
        await store.insert_api_key(conn, key_id, tenant.id, hash_key(api_key), at)
        await db.add_outbox(
            conn,
            [
                db.OutboxMessage(
                    TENANT_EVENTS, tenant.id, envelope_for(e, occurred_at=at, tenant_id=tenant.id)
                )
                for e in events
            ],
        )
    return NewTenant(tenant, api_key)


async def create_campaign(
    pool: asyncpg.Pool,
    tenant: store.Tenant,
    *,
    name: str,
    text: str,
    sender_id: str | None,
    message_type: MessageType,
    audience: list[tuple[str, dict[str, str]]],
    at: datetime,
) -> store.Campaign:
    campaign = store.Campaign(
        str(uuid.uuid4()), tenant.id, name, text, sender_id, message_type.value, "draft", None
    )
    created = CampaignCreated(
        name=name,
        text=text,
        sender_id=sender_id,
        message_type=message_type,
        channel=Channel(tenant.channel),
        created_at=at,
    )
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_campaign(conn, campaign, at)
        await store.insert_audience(conn, campaign.id, audience)
        await db.add_outbox(conn, [campaign_event(created, campaign.id, tenant.id, at)])
    return campaign


@dataclass(frozen=True)
class Enqueued:
    campaign_id: str
    run_token: str
    queued: int
    batches: int

    def body(self) -> dict[str, Any]:
        """The seed's enqueue contract, plus the run token."""
        return {
            "ok": True,
            "queued": self.queued,
            "enqueuedJobs": self.batches,
            "campaignId": self.campaign_id,
            "status": "sending",
            "runToken": self.run_token,
        }


async def enqueue(
    pool: asyncpg.Pool,
    tenant: store.Tenant,
    campaign_id: str,
    *,
    batch_size: int,
    idempotency_key: str | None,
    at: datetime,
) -> tuple[int, dict[str, Any]]:
    """Claim the campaign, materialise its recipients once, plan fixed batches and queue them.

    All in one transaction: either the campaign is `sending` with every batch in the outbox, or
    nothing changed. A repeated Idempotency-Key gets the first answer back."""
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key:
            stored = await store.stored_response(conn, tenant.id, idempotency_key)
            if stored is not None:
                if stored["request_hash"] != f"enqueue:{campaign_id}":
                    raise Refused(
                        422,
                        "IDEMPOTENCY_KEY_REUSED",
                        "This Idempotency-Key was already used for another request.",
                    )
                return int(stored["status_code"]), dict(stored["response"])
        try:
            campaign = await store.lock_campaign(conn, tenant.id, campaign_id)
        except asyncpg.LockNotAvailableError:
            raise Refused(409, "ALREADY_SENDING", "Another request is enqueuing this campaign.") from None
        if campaign is None:
            raise Refused(404, "RESOURCE_NOT_FOUND", "No such campaign.")
        domain.check_enqueuable(campaign.status)
        if tenant.subscription_status != "active":
            raise Refused(
                403, "SUBSCRIPTION_REQUIRED", "An active subscription is required to send campaigns."
            )
        if not campaign.text.strip():
            raise Refused(400, "NO_MESSAGE_TEXT", "The campaign has no message text.")
        await store.materialise_from_audience(conn, campaign.id)
        result = await _plan_run(conn, tenant, campaign, RunKind.INITIAL, batch_size, at)
        body = result.body()
        if idempotency_key:
            await store.store_response(
                conn, tenant.id, idempotency_key, f"enqueue:{campaign_id}", 200, body, at
            )
        return 200, body


async def _plan_run(
    conn: Conn,
    tenant: store.Tenant,
    campaign: store.Campaign,
    kind: RunKind,
    batch_size: int,
    at: datetime,
) -> Enqueued:
    total = await store.count_recipients(conn, campaign.id, "queued")
    if total == 0:
        raise Refused(400, "NO_RECIPIENTS", "The campaign has no eligible recipients.")
    campaign_total = await store.count_recipients(conn, campaign.id)
    run_token = uuid.uuid4().hex[:16]
    run = Run(run_token, campaign.id, total, domain.batch_count(total, batch_size))
    await store.start_run(conn, run, kind.value, batch_size, at)
    await store.mark_campaign_sending(conn, campaign.id, run_token, at)
    await db.add_outbox(
        conn,
        [
            campaign_event(
                CampaignEnqueued(
                    run_token=run_token,
                    run_kind=kind,
                    total=total,
                    campaign_total=campaign_total,
                    batch_count=run.batch_count,
                    batch_size=batch_size,
                    credits_reserved=0,
                    started_at=at,
                ),
                campaign.id,
                tenant.id,
                at,
            )
        ],
    )
    sender = campaign.sender_id or tenant.sender_id
    planned: list[tuple[str, int, int]] = []
    async for rows in store.stream_recipients(conn, campaign.id, "queued", batch_size):
        index = len(planned)
        bid = domain.batch_id(campaign.id, run_token, index)
        queued = BatchQueued(
            batch_id=bid,
            run_token=run_token,
            batch_no=index,
            sender_id=sender,
            template=campaign.text,
            message_type=MessageType(campaign.message_type),
            recipients=tuple(
                BatchRecipient.model_construct(id=r["id"], phone=r["phone"], values=r["values"]) for r in rows
            ),
        )
        await db.add_outbox(
            conn,
            [
                db.OutboxMessage(
                    SMS_BATCHES,
                    campaign.id,
                    envelope_for(queued, occurred_at=at, tenant_id=tenant.id, campaign_id=campaign.id),
                )
            ],
        )
        planned.append((bid, index, len(rows)))
    await store.insert_run_batches(conn, run_token, planned)
    return Enqueued(campaign.id, run_token, total, len(planned))


Outcome = BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred


async def apply_outcome(conn: Conn, envelope: Envelope, event: Event) -> None:
    """Settle one batch outcome into its run (first outcome only) and finish the run when it is over."""
    if isinstance(event, BatchClaimed):
        await store.mark_batch_claimed(conn, event.batch_id)
        return
    if not isinstance(event, BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred):
        return
    at = envelope.occurred_at
    outcome = domain.outcome_of(event)
    run_token = await store.settle_run_batch(
        conn, event.batch_id, outcome.status, len(outcome.accepted_ids), len(outcome.failed_ids), at
    )
    if run_token is None:
        return  # a duplicate, or a batch this enqueuer never planned
    run = await store.load_run(conn, run_token)
    assert run is not None, f"run {run_token} of batch {event.batch_id} is missing"
    await store.set_recipient_state(conn, run.campaign_id, outcome.accepted_ids, "sent")
    await store.set_recipient_state(conn, run.campaign_id, outcome.failed_ids, "failed")
    await store.set_recipient_state(conn, run.campaign_id, outcome.ambiguous_ids, "ambiguous")
    before = await store.campaign_accepted(conn, run.campaign_id)
    settlement = domain.settle_batch(run, outcome, campaign_accepted_before=before, at=at)
    await store.save_run(conn, settlement.run, at, settlement.finished)
    if settlement.campaign_status:
        await store.finish_campaign(conn, run.campaign_id, run.token, settlement.campaign_status, at)
    await db.add_outbox(
        conn,
        [
            campaign_event(e, run.campaign_id, envelope.tenant_id or "", at, caused_by=envelope)
            for e in settlement.events
        ],
    )
