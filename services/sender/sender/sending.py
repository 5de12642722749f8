"""One batch through the ledger: compose, lock, claim (transaction 1), provider call with retries, record
(transaction 2).

- The texts are composed first, one batch at a time (the CPU-heavy stage): a batch that cannot even be
  prepared is never claimed, and the batches ahead reach the provider while the next one is composed.
- The batch lock (`locks.py`) is taken before the claim: whoever finds a claimed batch without an outcome
  while holding it knows that the claimant is gone, so the call may have gone out: the batch becomes
  ambiguous and is never resent from here.
- The claim waits for a call slot and the traffic account's message rate, so pause and cancel are checked
  as late as possible: a batch still waiting for its turn is deferred, not sent.
- The answer is recorded with the batch still locked; if someone declared the batch ambiguous meanwhile
  (this process lost its lock connection), the answer resolves it instead (BatchResolved).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from sender import domain, ledger, outcomes, store
from sender.intake import decode_batch
from sender.limits import TrafficLimits
from sender.locks import BatchLocks
from sender.mitto import Accepted, Ambiguous, MittoClient, NotSent, SendOutcome
from sender.outcomes import Cause
from sender.settings import SenderSettings
from shared.broker import TRANSIENT_ERRORS
from shared.db import Conn
from shared.events import BatchQueued, BatchRecipient
from shared.topics import SMS_OUTCOMES

log = logging.getLogger(__name__)

PoolRef = Callable[[], asyncpg.Pool]
PREPARE_CHUNK = 500  # recipients composed between two yields to the event loop (~3 ms)


def now() -> datetime:
    return datetime.now(UTC)


class Unsendable(Exception):
    """The batch cannot be handled at all (nothing was claimed): dead-letter it with this reason."""


class SendMetrics(Protocol):
    def batch_done(self, status: str, recipients: int) -> None: ...

    def provider_call(self, outcome: str, seconds: float) -> None: ...

    def retried(self, reason: str) -> None: ...


class BatchSender:
    def __init__(
        self,
        pool_ref: PoolRef,
        mitto: MittoClient,
        settings: SenderSettings,
        metrics: SendMetrics,
        locks: BatchLocks,
        limits: TrafficLimits,
    ) -> None:
        self.pool_ref = pool_ref
        self.mitto = mitto
        self.settings = settings
        self.metrics = metrics
        self.locks = locks
        self.limits = limits
        # Decoding and composing are the CPU-heavy stages: one batch at a time goes through them, yielding
        # between chunks, so the batches ahead of it reach the provider (and the database) meanwhile
        # instead of all waiting until every batch of the poll is composed.
        self._cpu = asyncio.Semaphore(1)

    async def handle_record(self, raw: bytes) -> str:
        """Decode a sms.batches record and handle it; a DecodeError is raised for the dead-letter topic."""
        async with self._cpu:
            cause, batch = decode_batch(raw)
            prepared = await self._compose(cause, batch, list(batch.recipients))
        return await self._send(cause, batch, raw, prepared)

    async def handle(self, cause: Cause, batch: BatchQueued, raw: bytes) -> str:
        """Send one batch at most once. Returns what became of it: sent, failed, ambiguous, deferred, or
        repeated (its outcome was recorded before and has been emitted again)."""
        prepared = await self.prepare(cause, batch, list(batch.recipients))
        return await self._send(cause, batch, raw, prepared)

    async def prepare(
        self, cause: Cause, batch: BatchQueued, recipients: list[BatchRecipient]
    ) -> domain.Prepared:
        async with self._cpu:
            return await self._compose(cause, batch, recipients)

    async def _compose(
        self, cause: Cause, batch: BatchQueued, recipients: list[BatchRecipient]
    ) -> domain.Prepared:
        messages: list[dict[str, Any]] = []
        parts: list[int] = []
        for start in range(0, len(recipients), PREPARE_CHUNK):
            try:
                chunk = domain.prepare(
                    batch,
                    recipients[start : start + PREPARE_CHUNK],
                    campaign_id=cause.campaign_id,
                    traffic_account=self.settings.mitto_traffic_account_id,
                    default_sender=self.settings.mitto_sender,
                    links=self.settings.links,
                )
            except Exception as exc:
                raise Unsendable(f"cannot compose the batch's texts: {type(exc).__name__}: {exc}") from exc
            messages += chunk.messages
            parts += chunk.parts
            await asyncio.sleep(0)
        return domain.Prepared(messages, parts)

    async def _send(self, cause: Cause, batch: BatchQueued, raw: bytes, prepared: domain.Prepared) -> str:
        async with self.locks.hold(batch.batch_id):
            async with self.limits.call(
                self.settings.mitto_traffic_account_id, len(batch.recipients)
            ) as permit:
                claim = await self._claim(cause, batch, raw)
                if isinstance(claim, str):
                    permit.unused()
                    return claim
                claimed, duplicates = claim
                prepared = domain.only_claimed(prepared, batch.recipients, duplicates)
                if claimed:
                    outcome, attempts = await self.call(prepared.messages)
                else:
                    permit.unused()
                    outcome, attempts = Accepted(None, (), ()), 1
            verdict = domain.judge(claimed, prepared.parts, outcome)
            return await self._record(cause, batch, raw, claimed, duplicates, verdict, attempts - 1)

    async def call(self, messages: list[dict[str, Any]]) -> tuple[SendOutcome, int]:
        """Call until the answer is final: only what provably never reached the provider is tried again.
        Returns the final answer and the number of attempts."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            started = loop.time()
            try:
                outcome = await self.mitto.send(messages)
            except Exception as exc:  # the adapter maps every failure; should it not, only this is safe
                log.exception("provider call failed unexpectedly")
                outcome = Ambiguous(f"unexpected {type(exc).__name__} during the provider call")
            self.metrics.provider_call(type(outcome).__name__, loop.time() - started)
            if not domain.should_retry(outcome, attempt, self.settings.max_attempts):
                return outcome, attempt
            assert isinstance(outcome, NotSent)
            delay = domain.backoff_seconds(
                attempt,
                base=self.settings.backoff_base_s,
                cap=self.settings.backoff_max_s,
                retry_after=outcome.retry_after,
                jitter=random.random(),
            )
            self.metrics.retried("429" if outcome.status == 429 else "unreachable")
            log.info(
                "provider did not take the call (%s); attempt %d in %.2fs", outcome.error, attempt + 1, delay
            )
            await asyncio.sleep(delay)

    # --- transaction 1 ---------------------------------------------------------------------------

    async def _claim(
        self, cause: Cause, batch: BatchQueued, raw: bytes
    ) -> str | tuple[list[BatchRecipient], dict[int, str]]:
        at = now()
        cid = cause.campaign_id
        try:
            async with self.pool_ref().acquire() as conn, conn.transaction():
                claim = await store.claim_batch(
                    conn, batch.batch_id, cid, batch.run_token, cause.tenant_id, len(batch.recipients), at
                )
                if claim.existing is not None:
                    return await self._seen_before(conn, cause, batch, raw, claim.existing, at)
                go = domain.go_or_defer(claim.control, batch.run_token)
                if go != "send":
                    ids = [r.id for r in batch.recipients]
                    event = outcomes.deferred(batch.batch_id, batch.run_token, ids, go, cause=cause, at=at)
                    await store.finish_batch(conn, batch.batch_id, "deferred", event, error=go, at=at)
                    await store.add_outbox(conn, SMS_OUTCOMES, cid, [event])
                    self.metrics.batch_done("deferred", len(ids))
                    return "deferred"
                duplicates = await store.claim_recipients(conn, cid, batch.batch_id, batch.recipients)
                claimed = [r for r in batch.recipients if r.id not in duplicates]
                event = outcomes.claimed(
                    batch.batch_id, batch.run_token, [r.id for r in claimed], cause=cause, at=at
                )
                await store.add_outbox(conn, SMS_OUTCOMES, cid, [event])
                return claimed, duplicates
        except TRANSIENT_ERRORS:
            raise
        except asyncpg.PostgresError as exc:  # a constraint or bad input (a campaign id that is no uuid)
            raise Unsendable(f"cannot claim the batch: {type(exc).__name__}: {exc}") from exc

    async def _seen_before(
        self,
        conn: Conn,
        cause: Cause,
        batch: BatchQueued,
        raw: bytes,
        existing: store.ExistingBatch,
        at: datetime,
    ) -> str:
        if existing.status == "claimed" and existing.outcome is not None:
            # An operator's resend was in flight when its process stopped (we hold the lock now).
            reason = f"{ledger.INTERRUPTED} (operator resend)"
            await store.set_batch_status(conn, batch.batch_id, "ambiguous", error=reason)
        if existing.outcome is not None:
            # Already decided: say it again (same event id), never call the provider again.
            await store.add_outbox(conn, SMS_OUTCOMES, cause.campaign_id, [existing.outcome])
            return "repeated"
        log.warning("batch %s was interrupted during its provider call; it is ambiguous now", batch.batch_id)
        count = await ledger.declare_interrupted(conn, cause, batch, raw, ledger.INTERRUPTED, at)
        self.metrics.batch_done("ambiguous", count)
        return "ambiguous"

    # --- transaction 2 ---------------------------------------------------------------------------

    async def _record(
        self,
        cause: Cause,
        batch: BatchQueued,
        raw: bytes,
        claimed: list[BatchRecipient],
        duplicates: dict[int, str],
        verdict: domain.Verdict,
        retries: int,
    ) -> str:
        """The provider's answer is only in memory now: keep trying to write it rather than lose it."""
        delay = 0.5
        while True:
            try:
                async with self.pool_ref().acquire() as conn, conn.transaction():
                    return await self._write(conn, cause, batch, raw, claimed, duplicates, verdict, retries)
            except TRANSIENT_ERRORS:
                log.exception(
                    "could not record the outcome of batch %s; retrying in %.1fs", batch.batch_id, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _write(
        self,
        conn: Conn,
        cause: Cause,
        batch: BatchQueued,
        raw: bytes,
        claimed: list[BatchRecipient],
        duplicates: dict[int, str],
        verdict: domain.Verdict,
        retries: int,
    ) -> str:
        at = now()
        bid, run, cid = batch.batch_id, batch.run_token, cause.campaign_id
        current = await store.load_ambiguous(conn, bid, lock=True)
        assert current is not None
        state = current[0]
        if state.status == "ambiguous":
            return await self._late_answer(conn, cause, batch, claimed, verdict, retries, at)
        if state.status != "claimed":
            log.error("batch %s is %s when its answer arrived; the answer is not recorded", bid, state.status)
            return state.status
        ids = [r.id for r in claimed]
        if verdict.status == "sent":
            results = verdict.results + domain.duplicate_rows(batch.recipients, duplicates)
            event = outcomes.sent(bid, run, verdict.bulk_id, results, retries, cause=cause, at=at)
            await store.mark_recipients(conn, cid, bid, rejected=verdict.rejected)
            await store.finish_batch(
                conn, bid, "sent", event, bulk_id=verdict.bulk_id, retry_count=retries, at=at
            )
        elif verdict.status == "failed":
            error = verdict.error or "provider refused"
            event = outcomes.failed(bid, run, ids, error, retries, cause=cause, at=at)
            await store.mark_recipients(conn, cid, bid, rejected=verdict.rejected)
            await store.finish_batch(conn, bid, "failed", event, retry_count=retries, error=error, at=at)
        else:
            reason = verdict.error or "unknown"
            event = outcomes.ambiguous(bid, run, ids, reason, retries, cause=cause, at=at)
            await store.finish_batch(
                conn,
                bid,
                "ambiguous",
                event,
                retry_count=retries,
                error=reason,
                remaining=len(ids),
                batch_event=ledger.pack_event(raw),
                at=at,
            )
            await store.add_known_ids(conn, bid, verdict.known_ids)
        await store.add_outbox(conn, SMS_OUTCOMES, cid, [event])
        self.metrics.batch_done(verdict.status, len(ids))
        return verdict.status

    async def _late_answer(
        self,
        conn: Conn,
        cause: Cause,
        batch: BatchQueued,
        claimed: list[BatchRecipient],
        verdict: domain.Verdict,
        retries: int,
        at: datetime,
    ) -> str:
        """Someone declared this batch ambiguous while its call was still running; here is the answer."""
        if verdict.status == "ambiguous":
            return "ambiguous"
        held = {r.phone for r in await ledger.still_held(conn, cause.campaign_id, batch)}
        resolution = domain.resolve_with_answer(verdict, claimed, held)
        remaining = len(held)
        log.warning(
            "batch %s: the answer arrived after it was declared ambiguous; resolving it", batch.batch_id
        )
        left = await ledger.apply_resolution(
            conn,
            cause,
            batch.batch_id,
            batch.run_token,
            "provider_answer",
            resolution,
            remaining_before=remaining,
            bulk_id=verdict.bulk_id,
            retries=retries,
            at=at,
        )
        return "resolved" if left == 0 else "ambiguous"
