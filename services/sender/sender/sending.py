"""One batch through the ledger: claim (transaction 1), provider call with retries, record (transaction 2).

A batch found already claimed but without an outcome was interrupted during a provider call: it may
have gone out, so it becomes ambiguous and is never resent from here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from sender import domain, store
from sender.mitto import Accepted, Ambiguous, MittoClient, NotSent, SendOutcome
from sender.settings import SenderSettings
from shared import db
from shared.broker import TRANSIENT_ERRORS
from shared.db import Conn
from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchRecipient,
    BatchSent,
    Envelope,
    encode,
    envelope_for,
)
from shared.topics import SMS_OUTCOMES

Outcome = BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


PoolRef = Callable[[], asyncpg.Pool]


class SendMetrics(Protocol):
    def batch_done(self, status: str, recipients: int) -> None: ...

    def provider_call(self, outcome: str, seconds: float) -> None: ...


class BatchSender:
    def __init__(
        self, pool_ref: PoolRef, mitto: MittoClient, settings: SenderSettings, metrics: SendMetrics
    ) -> None:
        self.pool_ref = pool_ref
        self.mitto = mitto
        self.settings = settings
        self.metrics = metrics
        self.calls = asyncio.Semaphore(settings.max_concurrent_bulk_calls)

    async def handle(self, envelope: Envelope, batch: BatchQueued) -> None:
        campaign_id = envelope.campaign_id or batch.batch_id.split(":", 1)[0]
        pool = self.pool_ref()
        at = now()
        async with pool.acquire() as conn, conn.transaction():
            existing = await store.claim_batch(
                conn, batch.batch_id, campaign_id, batch.run_token, len(batch.recipients), at
            )
            if existing is not None:
                await self._seen_before(conn, envelope, batch, campaign_id, existing, at)
                return
            go = domain.go_or_defer(await store.load_control(conn, campaign_id), batch.run_token)
            if go != "send":
                deferred = BatchDeferred(
                    batch_id=batch.batch_id,
                    run_token=batch.run_token,
                    recipient_ids=tuple(r.id for r in batch.recipients),
                    reason=go,
                    at=at,
                )
                await self._finish(conn, envelope, campaign_id, deferred, "deferred", at)
                return
            duplicates = await store.claim_recipients(conn, campaign_id, batch.batch_id, batch.recipients)
            claimed = [r for r in batch.recipients if r.phone not in duplicates]
            await db.add_outbox(
                conn,
                [
                    self._outcome_message(
                        envelope,
                        campaign_id,
                        BatchClaimed(
                            batch_id=batch.batch_id,
                            run_token=batch.run_token,
                            recipient_ids=tuple(r.id for r in claimed),
                            claimed_at=at,
                        ),
                        at,
                    )
                ],
            )
        dup_results = {
            r.id: (r.phone, duplicates[r.phone]) for r in batch.recipients if r.phone in duplicates
        }
        prepared = domain.prepare(
            batch,
            claimed,
            campaign_id=campaign_id,
            traffic_account=self.settings.mitto_traffic_account_id,
            default_sender=self.settings.mitto_sender,
            links=self.settings.links,
        )
        outcome, attempts = (
            (await self._send_with_retries(prepared.messages)) if claimed else (Accepted(None, ()), 1)
        )
        done = now()
        event: Outcome
        if isinstance(outcome, Accepted):
            event = BatchSent(
                batch_id=batch.batch_id,
                run_token=batch.run_token,
                bulk_id=outcome.bulk_id,
                results=domain.results_of_send(claimed, prepared.parts, outcome, dup_results),
                retry_count=attempts - 1,
                sent_at=done,
            )
            status = "sent"
        elif isinstance(outcome, NotSent):
            event = BatchFailed(
                batch_id=batch.batch_id,
                run_token=batch.run_token,
                recipient_ids=tuple(r.id for r in claimed),
                error=outcome.error,
                retry_count=attempts - 1,
                failed_at=done,
            )
            status = "failed"
        else:
            event = BatchAmbiguous(
                batch_id=batch.batch_id,
                run_token=batch.run_token,
                recipient_ids=tuple(r.id for r in claimed),
                reason=outcome.reason,
                retry_count=attempts - 1,
                at=done,
            )
            status = "ambiguous"
        await self._record_with_persistence(envelope, campaign_id, claimed, outcome, event, status, done)

    async def _seen_before(
        self,
        conn: Conn,
        envelope: Envelope,
        batch: BatchQueued,
        campaign_id: str,
        existing: store.ExistingBatch,
        at: datetime,
    ) -> None:
        if existing.outcome is not None:
            # Already decided: say it again (same event id), never call the provider again.
            await conn.execute(
                "INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)",
                SMS_OUTCOMES,
                campaign_id.encode(),
                existing.outcome,
            )
            await conn.execute("SELECT pg_notify($1, current_schema())", db.OUTBOX_CHANNEL)
            return
        log.warning("batch %s was interrupted during its provider call; marking it ambiguous", batch.batch_id)
        recipients = tuple(r.id for r in batch.recipients)
        ambiguous = BatchAmbiguous(
            batch_id=batch.batch_id,
            run_token=batch.run_token,
            recipient_ids=recipients,
            reason="sender stopped during the provider call",
            retry_count=0,
            at=at,
        )
        await conn.execute(
            "UPDATE sent_recipients SET status = 'ambiguous' WHERE batch_id = $1 AND status = 'claimed'",
            batch.batch_id,
        )
        await self._finish(conn, envelope, campaign_id, ambiguous, "ambiguous", at)

    async def _send_with_retries(self, messages: list[dict[str, Any]]) -> tuple[SendOutcome, int]:
        attempt = 0
        while True:
            attempt += 1
            async with self.calls:
                started = asyncio.get_running_loop().time()
                outcome = await self.mitto.send_bulk(messages)
                self.metrics.provider_call(
                    type(outcome).__name__, asyncio.get_running_loop().time() - started
                )
            if not (isinstance(outcome, NotSent) and outcome.retry) or attempt >= self.settings.max_attempts:
                return outcome, attempt
            delay = domain.backoff_seconds(
                attempt,
                base=self.settings.backoff_base_s,
                cap=self.settings.backoff_max_s,
                retry_after=outcome.retry_after,
                jitter=random.random(),
            )
            log.info("provider did not take the batch (%s); retry %d in %.2fs", outcome.error, attempt, delay)
            await asyncio.sleep(delay)

    async def _record_with_persistence(
        self,
        envelope: Envelope,
        campaign_id: str,
        claimed: list[BatchRecipient],
        outcome: SendOutcome,
        event: Outcome,
        status: str,
        at: datetime,
    ) -> None:
        """The provider's answer is only in memory now: keep trying to write it rather than lose it."""
        delay = 0.5
        while True:
            try:
                async with self.pool_ref().acquire() as conn, conn.transaction():
                    await self._record(conn, campaign_id, claimed, outcome)
                    await self._finish(conn, envelope, campaign_id, event, status, at)
                self.metrics.batch_done(status, len(claimed))
                return
            except TRANSIENT_ERRORS:
                log.exception("could not record the outcome of a batch; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _record(
        self, conn: Conn, campaign_id: str, claimed: list[BatchRecipient], outcome: SendOutcome
    ) -> None:
        phones = [r.phone for r in claimed]
        if isinstance(outcome, Accepted):
            statuses = ["accepted" if i.message_id else "rejected" for i in outcome.items]
            ids = [i.message_id for i in outcome.items]
        elif isinstance(outcome, NotSent):
            statuses, ids = ["rejected"] * len(phones), [None] * len(phones)
        else:
            assert isinstance(outcome, Ambiguous)
            statuses, ids = ["ambiguous"] * len(phones), [None] * len(phones)
        await store.record_recipients(conn, campaign_id, phones, statuses, ids)

    async def _finish(
        self,
        conn: Conn,
        envelope: Envelope,
        campaign_id: str,
        event: Outcome,
        status: str,
        at: datetime,
    ) -> None:
        message = self._outcome_message(envelope, campaign_id, event, at)
        await store.finish_batch(
            conn,
            event.batch_id,
            status,
            encode(message.envelope),
            bulk_id=event.bulk_id if isinstance(event, BatchSent) else None,
            retry_count=0 if isinstance(event, BatchDeferred) else event.retry_count,
            error=event.error if isinstance(event, BatchFailed) else getattr(event, "reason", None),
            at=at,
        )
        await db.add_outbox(conn, [message])

    def _outcome_message(
        self, cause: Envelope, campaign_id: str, event: Outcome | BatchClaimed, at: datetime
    ) -> db.OutboxMessage:
        return db.OutboxMessage(
            SMS_OUTCOMES,
            campaign_id,
            envelope_for(
                event,
                occurred_at=at,
                tenant_id=cause.tenant_id,
                campaign_id=campaign_id,
                caused_by=cause,
                event_id=domain.outcome_event_id(event.batch_id, type(event).__name__),
            ),
        )
