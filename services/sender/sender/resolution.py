"""Ambiguous batches after the fact: what can be settled automatically, and the operator's commands.

What can be known without an operator, honestly:
- A 5xx, a read timeout or a crash after the request went out leaves no message ids: Mitto has no lookup
  by bulk id or by reference, so nothing can be looked up and delivery reports cannot be tied to a
  recipient. Such recipients stay ambiguous until an operator decides.
- An answer whose results could not be matched by position (a different number of items) still carries
  message ids: each is looked up, and the `reference` sent with it ties it back to its recipient
  (`status_lookup`). Recipients no id was found for stay ambiguous.
- An answer that arrives after its batch was declared ambiguous resolves it (`sending.py`).
The operator lists ambiguous batches and either fails their remaining recipients (never sent again: they
may have been delivered) or resends them, having decided that the batch did not go out. The HTTP
endpoints and the command line both call this module.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sender import domain, ledger, store
from sender.intake import decode_batch
from sender.locks import BatchLocks
from sender.mitto import Found, LookupFailed, LookupOutcome, MittoClient, Unknown
from sender.outcomes import Cause
from sender.sending import BatchSender, PoolRef
from shared.broker import TRANSIENT_ERRORS
from shared.db import Conn
from shared.events import BatchQueued, BatchRecipient

log = logging.getLogger(__name__)

Action = Literal["fail", "resend"]


def now() -> datetime:
    return datetime.now(UTC)


class ResolutionRefused(Exception):
    """A command that cannot be carried out; `code` is stable, the message says why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Resolved:
    batch_id: str
    action: Action
    accepted: int
    failed: int
    still_ambiguous: int
    note: str


@dataclass(frozen=True)
class AmbiguousDetail:
    batch: store.AmbiguousBatch
    recipients: list[BatchRecipient]


class Resolver:
    def __init__(
        self,
        pool_ref: PoolRef,
        sender: BatchSender,
        locks: BatchLocks,
        mitto: MittoClient,
        lookup_concurrency: int = 8,
    ) -> None:
        self.pool_ref = pool_ref
        self.sender = sender
        self.locks = locks
        self.mitto = mitto
        self.lookup_concurrency = lookup_concurrency

    # --- reading ---------------------------------------------------------------------------------

    async def list_batches(self, limit: int = 100, after: str | None = None) -> list[store.AmbiguousBatch]:
        async with self.pool_ref().acquire() as conn:
            return await store.ambiguous_batches(conn, limit, after)

    async def detail(self, batch_id: str) -> AmbiguousDetail:
        async with self.pool_ref().acquire() as conn:
            state, cause, batch = await self._load(conn, batch_id, lock=False)
            return AmbiguousDetail(state, await ledger.still_held(conn, cause.campaign_id, batch))

    # --- the operator's commands -----------------------------------------------------------------

    async def resolve(self, batch_id: str, action: Action) -> Resolved:
        async with self.locks.try_hold(batch_id) as free:
            if not free:
                raise ResolutionRefused(
                    409, "BATCH_BUSY", f"Batch {batch_id} is being sent or resolved right now."
                )
            return await (self._fail(batch_id) if action == "fail" else self._resend(batch_id))

    async def _fail(self, batch_id: str) -> Resolved:
        async with self.pool_ref().acquire() as conn, conn.transaction():
            _state, cause, batch = await self._load(conn, batch_id, lock=True)
            members = await ledger.still_held(conn, cause.campaign_id, batch)
            left = await ledger.apply_resolution(
                conn,
                cause,
                batch_id,
                batch.run_token,
                "operator_fail",
                domain.resolve_by_operator_fail(members),
                remaining_before=len(members),
                at=now(),
            )
        return Resolved(
            batch_id, "fail", 0, len(members), left, "failed; these recipients are never sent again"
        )

    async def _resend(self, batch_id: str) -> Resolved:
        async with self.pool_ref().acquire() as conn, conn.transaction():
            _state, cause, batch = await self._load(conn, batch_id, lock=True)
            go = domain.go_or_defer(await store.load_control(conn, cause.campaign_id), batch.run_token)
            if go != "send":
                raise ResolutionRefused(
                    409,
                    "CAMPAIGN_STOPPED",
                    f"The campaign's run is {go}: fail the batch, or resume the campaign first.",
                )
            members = await ledger.still_held(conn, cause.campaign_id, batch)
            if not members:  # nobody left to send to: settle the batch as it is
                nothing = domain.Resolution([], [], [], [])
                await ledger.apply_resolution(
                    conn,
                    cause,
                    batch_id,
                    batch.run_token,
                    "operator_resend",
                    nothing,
                    remaining_before=0,
                    at=now(),
                )
                return Resolved(batch_id, "resend", 0, 0, 0, "nothing left to resend")
            # Claimed again: a crash during this call leaves it claimed with an outcome, which the sweep
            # (or the batch's redelivery) turns back into ambiguous, never into a second resend.
            await store.set_batch_status(conn, batch_id, "claimed")
        prepared = await self.sender.prepare(cause, batch, members)
        async with self.sender.limits.call(self.sender.settings.mitto_traffic_account_id, len(members)):
            outcome, attempts = await self.sender.call(prepared.messages)
        verdict = domain.judge(members, prepared.parts, outcome)
        while True:
            try:
                return await self._record_resend(batch_id, cause, batch, members, verdict, attempts - 1)
            except TRANSIENT_ERRORS:
                log.exception("could not record the resend of %s; retrying", batch_id)
                await asyncio.sleep(1.0)

    async def _record_resend(
        self,
        batch_id: str,
        cause: Cause,
        batch: BatchQueued,
        members: list[BatchRecipient],
        verdict: domain.Verdict,
        retries: int,
    ) -> Resolved:
        async with self.pool_ref().acquire() as conn, conn.transaction():
            await store.lock_batch(conn, batch_id)
            if verdict.status == "ambiguous":
                await store.set_batch_status(
                    conn, batch_id, "ambiguous", error=f"operator resend: {verdict.error}"
                )
                await store.add_known_ids(conn, batch_id, verdict.known_ids)
                return Resolved(batch_id, "resend", 0, 0, len(members), f"still ambiguous: {verdict.error}")
            resolution = domain.resolve_with_answer(verdict, members, {r.phone for r in members})
            left = await ledger.apply_resolution(
                conn,
                cause,
                batch_id,
                batch.run_token,
                "operator_resend",
                resolution,
                remaining_before=len(members),
                bulk_id=verdict.bulk_id,
                retries=retries,
                at=now(),
            )
        accepted = len(resolution.accepted)
        note = "resent" if verdict.status == "sent" else f"refused by the provider: {verdict.error}"
        return Resolved(batch_id, "resend", accepted, len(resolution.results) - accepted, left, note)

    async def _load(
        self, conn: Conn, batch_id: str, *, lock: bool
    ) -> tuple[store.AmbiguousBatch, Cause, BatchQueued]:
        found = await store.load_ambiguous(conn, batch_id, lock=lock)
        if found is None:
            raise ResolutionRefused(404, "BATCH_NOT_FOUND", f"No batch {batch_id} in the send ledger.")
        state, packed = found
        if state.status != "ambiguous" or packed is None:
            raise ResolutionRefused(
                409, "NOT_AMBIGUOUS", f"Batch {batch_id} is {state.status}, not ambiguous."
            )
        cause, batch = decode_batch(ledger.unpack_event(packed))
        return state, cause, batch

    # --- in the background -----------------------------------------------------------------------

    async def sweep(self) -> None:
        """Give back to the operator the resends whose process stopped mid-call (their lock is free)."""
        async with self.pool_ref().acquire() as conn:
            stale = await store.resends_in_flight(conn)
        for batch_id in stale:
            async with self.locks.try_hold(batch_id) as free:
                if not free:
                    continue
                async with self.pool_ref().acquire() as conn, conn.transaction():
                    current = await store.lock_batch(conn, batch_id)
                    if current is not None and current.status == "claimed" and current.outcome is not None:
                        reason = f"{ledger.INTERRUPTED} (operator resend)"
                        await store.set_batch_status(conn, batch_id, "ambiguous", error=reason)
                        log.warning("batch %s: its resend was interrupted; ambiguous again", batch_id)

    async def look_up_known_ids(self, max_batches: int = 20) -> int:
        """Look up message ids that ambiguous answers carried; returns how many recipients were resolved."""
        async with self.pool_ref().acquire() as conn:
            batch_ids = await store.batches_with_unlooked_ids(conn, max_batches)
        resolved = 0
        for batch_id in batch_ids:
            async with self.locks.try_hold(batch_id) as free:
                if free:
                    resolved += await self._look_up(batch_id)
        return resolved

    async def _look_up(self, batch_id: str) -> int:
        async with self.pool_ref().acquire() as conn:
            ids = await store.unlooked_ids(conn, batch_id)
        gate = asyncio.Semaphore(self.lookup_concurrency)

        async def one(mid: str) -> tuple[str, LookupOutcome]:
            async with gate:
                return mid, await self.mitto.message_status(mid)

        answers = await asyncio.gather(*(one(m) for m in ids))
        found = [a for _, a in answers if isinstance(a, Found)]
        done = [m for m, a in answers if not isinstance(a, LookupFailed)]
        unknown = sum(isinstance(a, Unknown) for _, a in answers)
        async with self.pool_ref().acquire() as conn, conn.transaction():
            try:
                _state, cause, batch = await self._load(conn, batch_id, lock=True)
            except ResolutionRefused:
                return 0  # resolved meanwhile
            await store.mark_looked_up(conn, batch_id, done, now())
            members = await ledger.still_held(conn, cause.campaign_id, batch)
            resolution = domain.resolve_by_lookups(cause.campaign_id, members, found)
            if not resolution.results:
                return 0
            await ledger.apply_resolution(
                conn,
                cause,
                batch_id,
                batch.run_token,
                "status_lookup",
                resolution,
                remaining_before=len(members),
                at=now(),
            )
        log.info(
            "batch %s: %d recipients resolved by status lookup (%d ids unknown)",
            batch_id,
            len(found),
            unknown,
        )
        return len(resolution.results)
