"""The enqueuer's background loop, run by every replica: enqueue due scheduled campaigns, plan pending resumes,
republish the batches of quiet runs, expire credit reservations.

Every claim is a row lock taken with FOR UPDATE SKIP LOCKED inside the transaction that acts on it, and the
action moves the row out of the claim's condition before commit: two replicas never act on the same row,
and a crash before commit leaves the row to be claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from enqueuer import planning, settlement
from enqueuer.domain import Refused
from enqueuer.messages import campaign_event
from enqueuer.planning import PlanSettings
from enqueuer.store import campaigns as campaign_store
from enqueuer.store import runs as run_store
from shared import db
from shared.events import CampaignEnqueueRefused

log = logging.getLogger(__name__)

MAX_PER_TICK = 50


@dataclass(frozen=True)
class LoopSettings:
    interval_s: float
    stuck_after: timedelta


@dataclass
class LoopCounters:
    scheduled: int = 0
    refused: int = 0
    resumed: int = 0
    republished_batches: int = 0
    expired: int = 0


async def run_due_campaigns(
    pool: asyncpg.Pool, plan: PlanSettings, now: datetime, counters: LoopCounters
) -> int:
    """Start every due scheduled campaign (each in its own transaction); returns how many were handled."""
    handled = 0
    while handled < MAX_PER_TICK:
        async with pool.acquire() as conn, conn.transaction():
            campaign = await campaign_store.claim_due(conn, now)
            if campaign is None:
                return handled
            await _start_or_refuse(conn, campaign, plan, now, counters, scheduled=True, readers=pool)
        handled += 1
    return handled


async def run_pending_resumes(
    pool: asyncpg.Pool, plan: PlanSettings, now: datetime, counters: LoopCounters
) -> int:
    handled = 0
    while handled < MAX_PER_TICK:
        async with pool.acquire() as conn, conn.transaction():
            campaign = await campaign_store.claim_resumable(conn)
            if campaign is None:
                return handled
            await _start_or_refuse(conn, campaign, plan, now, counters, scheduled=False, readers=pool)
        handled += 1
    return handled


async def _start_or_refuse(
    conn: db.Conn,
    campaign: campaign_store.Campaign,
    plan: PlanSettings,
    now: datetime,
    counters: LoopCounters,
    *,
    scheduled: bool,
    readers: asyncpg.Pool,
) -> None:
    try:
        async with conn.transaction():  # a savepoint: a refusal undoes the attempt, not the refusal record
            await planning.start_sending(conn, campaign, plan, now, readers=readers)
        if scheduled:
            counters.scheduled += 1
        else:
            counters.resumed += 1
    except Refused as exc:
        counters.refused += 1
        log.warning("campaign %s could not start: %s %s", campaign.id, exc.code, exc.message)
        error = {"code": exc.code, "message": exc.message, "at": now.isoformat(), **exc.extra}
        await campaign_store.record_refusal(conn, campaign.id, error, now, scheduled=scheduled)
        event = CampaignEnqueueRefused(code=exc.code, message=exc.message, refused_at=now)
        await db.add_outbox(conn, [campaign_event(event, campaign.id, campaign.tenant_id, now)])


async def republish_stuck_runs(
    pool: asyncpg.Pool, stuck_after: timedelta, now: datetime, counters: LoopCounters
) -> int:
    runs = 0
    while runs < MAX_PER_TICK:
        async with pool.acquire() as conn, conn.transaction():
            stuck = await run_store.claim_stuck_run(conn, now - stuck_after)
            if stuck is None:
                return runs
            count = await planning.republish_stuck(conn, stuck, now)
            log.warning(
                "run %s had no progress for %s: republished %d batches", stuck.token, stuck_after, count
            )
            counters.republished_batches += count
        runs += 1
    return runs


async def expire_reservations(pool: asyncpg.Pool, now: datetime, counters: LoopCounters) -> int:
    expired = 0
    while expired < MAX_PER_TICK:
        async with pool.acquire() as conn, conn.transaction():
            found = await run_store.claim_expired_reservation(conn, now)
            if found is None:
                return expired
            run, tenant_id = found
            released = await settlement.expire_reservation(conn, run, tenant_id, now)
            log.warning("credit reservation of run %s expired: released %d", run.token, released)
            counters.expired += 1
        expired += 1
    return expired


class BackgroundLoop:
    def __init__(
        self,
        pool_ref: Callable[[], asyncpg.Pool],
        plan: PlanSettings,
        settings: LoopSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.pool_ref = pool_ref
        self.plan = plan
        self.settings = settings
        self.clock = clock
        self.counters = LoopCounters()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def tick(self) -> None:
        pool = self.pool_ref()
        await run_due_campaigns(pool, self.plan, self.clock(), self.counters)
        await run_pending_resumes(pool, self.plan, self.clock(), self.counters)
        await republish_stuck_runs(pool, self.settings.stuck_after, self.clock(), self.counters)
        await expire_reservations(pool, self.clock(), self.counters)

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.exception("background loop: database unavailable; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.interval_s)
