"""Campaign use cases: create and edit drafts, schedule, enqueue, pause, resume, cancel, retry failed.

Each command locks the campaign row without waiting (a concurrent command gets 409), checks the transition,
and writes state and events in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from enqueuer import domain, planning
from enqueuer.domain import Refused
from enqueuer.messages import campaign_event
from enqueuer.planning import PlanSettings
from enqueuer.store import campaigns as store
from enqueuer.store import contacts as contact_store
from enqueuer.store import runs as run_store
from enqueuer.store import tenants as tenant_store
from shared import db
from shared.db import Conn
from shared.events import (
    CampaignCancelled,
    CampaignCreated,
    CampaignPaused,
    CampaignScheduled,
    CampaignUpdated,
    Channel,
    MessageType,
    RunKind,
)


@dataclass(frozen=True)
class Draft:
    """A campaign's editable content; `audience` None with `inline` rows for inline recipients."""

    name: str
    text: str
    sender_id: str | None
    message_type: MessageType
    offer_url: str | None
    audience: dict[str, Any] | None
    inline: list[tuple[str, dict[str, str]]] | None


async def check_audience(conn: Conn, tenant_id: str, audience: dict[str, Any] | None) -> None:
    if audience is None:
        return
    if (
        audience["kind"] == "list"
        and await contact_store.load_list(conn, tenant_id, audience["list_id"]) is None
    ):
        raise Refused(404, "LIST_NOT_FOUND", "No such list.")
    if (
        audience["kind"] == "segment"
        and await contact_store.load_segment(conn, tenant_id, audience["segment_id"]) is None
    ):
        raise Refused(404, "SEGMENT_NOT_FOUND", "No such segment.")
    if audience["kind"] == "filter":
        for list_id in audience["filter"].get("list_ids", []):
            if await contact_store.load_list(conn, tenant_id, list_id) is None:
                raise Refused(404, "LIST_NOT_FOUND", f"No list {list_id}.")


async def create(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, draft: Draft, scheduled_at: datetime | None, at: datetime
) -> store.Campaign:
    campaign = store.Campaign(
        str(uuid.uuid4()),
        tenant.id,
        draft.name,
        draft.text,
        draft.sender_id,
        draft.message_type.value,
        "draft",
        None,
        offer_url=draft.offer_url,
        audience=draft.audience,
        created_at=at,
        updated_at=at,
    )
    if scheduled_at is not None:
        domain.check_schedule_time(scheduled_at, at)
    created = CampaignCreated(
        name=draft.name,
        text=draft.text,
        sender_id=draft.sender_id,
        message_type=draft.message_type,
        channel=Channel(tenant.channel),
        created_at=at,
        offer_url=draft.offer_url,
    )
    async with pool.acquire() as conn, conn.transaction():
        await check_audience(conn, tenant.id, draft.audience)
        await store.insert_campaign(conn, campaign, at)
        if draft.inline:
            await store.insert_audience(conn, campaign.id, draft.inline)
        events = [campaign_event(created, campaign.id, tenant.id, at)]
        if scheduled_at is not None:
            await store.schedule(conn, campaign.id, scheduled_at, at)
            events.append(
                campaign_event(CampaignScheduled(scheduled_at=scheduled_at), campaign.id, tenant.id, at)
            )
            campaign = replace(campaign, status="scheduled", scheduled_at=scheduled_at)
        await db.add_outbox(conn, events)
    return campaign


@asynccontextmanager
async def locked(
    pool: asyncpg.Pool, tenant_id: str, campaign_id: str
) -> AsyncIterator[tuple[Conn, store.Campaign]]:
    """A transaction holding the campaign's row lock; 409 when another command holds it, 404 when absent."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            try:
                campaign = await store.lock_campaign(conn, tenant_id, campaign_id)
            except asyncpg.LockNotAvailableError:
                raise Refused(
                    409, "ALREADY_SENDING", "Another request is working on this campaign."
                ) from None
            if campaign is None:
                raise Refused(404, "RESOURCE_NOT_FOUND", "No such campaign.")
            yield conn, campaign
    except asyncpg.DeadlockDetectedError:
        # A pause or cancel racing the settlement of the run's last batch (which locks run, then campaign):
        # PostgreSQL rolled this command back whole; the caller may simply try again.
        raise Refused(409, "CONFLICT", "The campaign changed while this request ran; try again.") from None


async def update(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, changes: dict[str, Any], at: datetime
) -> store.Campaign:
    """Edit a draft or scheduled campaign. `changes` holds only what the caller sent."""
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("edit", c.status)
        inline = changes.pop("inline", None)
        if "audience" in changes:
            await check_audience(conn, tenant.id, changes["audience"])
        edited = replace(c, **changes, updated_at=at)
        if inline is not None:
            edited = replace(edited, audience=None)
            await store.replace_inline_audience(conn, c.id, inline)
        await store.update_draft(conn, edited, at)
        event = CampaignUpdated(
            name=edited.name,
            text=edited.text,
            sender_id=edited.sender_id,
            message_type=MessageType(edited.message_type),
            updated_at=at,
            offer_url=edited.offer_url,
        )
        await db.add_outbox(conn, [campaign_event(event, c.id, tenant.id, at)])
        return edited


async def schedule(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, scheduled_at: datetime, at: datetime
) -> store.Campaign:
    domain.check_schedule_time(scheduled_at, at)
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("schedule", c.status)
        await store.schedule(conn, c.id, scheduled_at, at)
        await db.add_outbox(
            conn, [campaign_event(CampaignScheduled(scheduled_at=scheduled_at), c.id, tenant.id, at)]
        )
        return replace(c, status="scheduled", scheduled_at=scheduled_at)


async def enqueue(
    pool: asyncpg.Pool,
    tenant: tenant_store.Tenant,
    campaign_id: str,
    *,
    plan: PlanSettings,
    idempotency_key: str | None,
    at: datetime,
) -> tuple[int, dict[str, Any]]:
    """The seed's enqueue. A repeated Idempotency-Key gets the first answer back (a request racing the
    first one waits for it), whatever happened in between."""
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key:
            await run_store.lock_idempotency_key(conn, tenant.id, idempotency_key)
            stored = await run_store.stored_response(conn, tenant.id, idempotency_key)
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
        status, body = await planning.start_sending(conn, campaign, plan, at, readers=pool)
        if idempotency_key:
            await run_store.store_response(
                conn, tenant.id, idempotency_key, f"enqueue:{campaign_id}", status, body, at
            )
        return status, body


async def resume(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, plan: PlanSettings, at: datetime
) -> tuple[int, dict[str, Any]]:
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("resume", c.status)
        fresh = await tenant_store.load_tenant(conn, tenant.id)
        assert fresh is not None
        planning.check_subscription(fresh)
        return await planning.resume_locked(conn, fresh, c, plan, at)


async def retry_failed(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, plan: PlanSettings, at: datetime
) -> dict[str, Any]:
    """A new run over the recipients that failed at send time (rejected or refused), and only those."""
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("retry_failed", c.status)
        fresh = await tenant_store.load_tenant(conn, tenant.id)
        assert fresh is not None
        planning.check_subscription(fresh)
        result = await planning.plan_run(conn, fresh, c, RunKind.RETRY_FAILED, "failed", plan, at)
        return result.body()


async def pause(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, at: datetime
) -> store.Campaign:
    """Stop a sending campaign: the sender defers the run's batches it has not claimed yet."""
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("pause", c.status)
        assert c.run_token is not None
        await run_store.set_run_status(conn, c.run_token, "paused", at)
        await store.set_status(conn, c.id, "paused", at)
        await db.add_outbox(
            conn, [campaign_event(CampaignPaused(run_token=c.run_token, paused_at=at), c.id, tenant.id, at)]
        )
        return replace(c, status="paused")


async def cancel(
    pool: asyncpg.Pool, tenant: tenant_store.Tenant, campaign_id: str, at: datetime
) -> store.Campaign:
    """Cancel for good. A run in progress stops: the sender defers what it has not claimed, and the run's
    credit reservation is released when its last batch settles."""
    async with locked(pool, tenant.id, campaign_id) as (conn, c):
        domain.check_transition("cancel", c.status)
        run_token = c.run_token if c.status in ("sending", "paused") else None
        if run_token:
            await run_store.set_run_status(conn, run_token, "cancelled", at)
            # A batch already in the sender's hands may still settle them (sent or failed) afterwards.
            await run_store.fail_unsent_retries(conn, c.id)
        await store.set_status(conn, c.id, "cancelled", at, finished=True)
        await db.add_outbox(
            conn,
            [campaign_event(CampaignCancelled(run_token=run_token, cancelled_at=at), c.id, tenant.id, at)],
        )
        return replace(c, status="cancelled")
