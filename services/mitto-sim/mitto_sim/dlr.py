"""Delivery-report dispatcher: planned reports wait in a `ReportQueue`; due ones are POSTed in batches.

A batch that is not answered 2xx (or not answered at all) goes back in the queue with a backoff: reports are
never dropped, only delayed. Reports carry the message counter, not a store index, and a reset bumps a
generation, so a batch in flight across a reset is neither counted nor retried.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import itemgetter

from mitto_sim.domain import (
    DELIVERED,
    DUPLICATE,
    FAILURE,
    SENT,
    STATUS_MASK,
    MessageIds,
    ReportShares,
    plan_many,
    reports_body,
)
from mitto_sim.metrics import SimMetrics
from mitto_sim.pending import ReportQueue, Span
from mitto_sim.settings import SimConfig
from mitto_sim.webhook import WebhookClient

RETRY_BASE_MS = 100
_COUNTER, _CODE, _COUNT = itemgetter(0), itemgetter(1), itemgetter(2)  # of a span
RETRY_MAX_MS = 5000


@dataclass(slots=True)
class DlrCounters:
    delivered: int = 0
    failed: int = 0
    sent: int = 0
    duplicates_sent: int = 0
    callback_errors: int = 0
    callbacks_ok: int = 0

    def clear(self) -> None:
        for field in fields(self):
            setattr(self, field.name, 0)


@dataclass(frozen=True, slots=True)
class FlushResult:
    sent: int
    pending: int
    error: str | None


def iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def shares_of(config: SimConfig) -> ReportShares:
    return ReportShares(
        delay_ms=round(config.dlr_delay_ms),
        jitter_ms=round(config.dlr_jitter_ms),
        failure=config.dlr_failure_share,
        duplicate=config.dlr_duplicate_share,
        sent_first=config.dlr_sent_first_share,
        out_of_order=config.dlr_out_of_order_share,
        alt_spelling=config.dlr_alt_spelling_share,
    )


def span_size(spans: list[Span]) -> int:
    return sum(map(_COUNT, spans))


class DlrDispatcher:
    """Owns the pending reports. `schedule` is synchronous; sending happens in one background task.

    `finalise(first counters, counts, status, now_ms)` is called with the runs of acknowledged final reports
    of each status and returns how many of those messages became final then; only those count as
    delivered/failed.
    """

    def __init__(
        self,
        config: Callable[[], SimConfig],
        ids: MessageIds,
        finalise: Callable[[list[int], list[int], int, int], int],
        draw: Callable[[], float],
        metrics: SimMetrics,
    ) -> None:
        self._config = config
        self._ids = ids
        self._finalise = finalise
        self._draw = draw
        self._metrics = metrics
        self._queue = ReportQueue()
        self._in_flight = 0
        self._failures_in_row = 0
        self._generation = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._client: WebhookClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters = DlrCounters()

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def start(self, client: WebhookClient) -> None:
        self._client = client
        self._task = asyncio.create_task(self._run(), name="mitto-sim-dlr")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def clear(self) -> None:
        """Forget pending reports and counters."""
        self._queue.clear()
        self._in_flight = 0
        self._failures_in_row = 0
        self._generation += 1
        self.counters.clear()
        self._wake.set()

    def wake(self) -> None:
        """Re-read the config (a new webhook_url may make pending reports sendable)."""
        self._wake.set()

    def schedule(self, first_counter: int, count: int) -> None:
        """Plan the reports of messages `first_counter .. first_counter + count - 1`, accepted now."""
        queue, now = self._queue, monotonic_ms()
        head = queue.next_due_ms()
        shares = shares_of(self._config())
        if shares.plain:
            queue.push(now + shares.delay_ms, first_counter, DELIVERED, count)
        else:
            queue.push_planned(now, first_counter, plan_many(self._draw, shares, count))
        new_head = queue.next_due_ms()
        if head is None or (new_head is not None and new_head < head):
            self._wake.set()

    async def flush(self) -> FlushResult:
        """Send every pending report now, whatever its due time; stops at the first failed callback."""
        sent = 0
        async with self._lock:
            while len(self._queue):
                batch = self._take(float("inf"))
                error = await self._post(batch)
                if error is not None:
                    return FlushResult(sent, self.pending, error)
                sent += span_size(batch)
        return FlushResult(sent, self.pending, None)

    async def _run(self) -> None:
        while True:
            wait = self._ms_to_next()
            if wait is None or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=None if wait is None else wait / 1000)
                continue
            async with self._lock:
                batch = self._take(monotonic_ms())
                if batch:
                    await self._post(batch)

    def _ms_to_next(self) -> int | None:
        due = self._queue.next_due_ms()
        if due is None or not self._config().webhook_url:
            return None
        return due - monotonic_ms()

    def _take(self, cutoff_ms: float) -> list[Span]:
        batch = self._queue.take(cutoff_ms, self._config().dlr_batch_size)
        self._in_flight = span_size(batch)
        return batch

    async def _post(self, batch: list[Span]) -> str | None:
        """POST one batch; on failure put it back with a backoff and return why."""
        config = self._config()
        now_ms = time.time_ns() // 1_000_000
        body = reports_body(batch, self._ids, iso_ms(now_ms), config.dlr_single_object)
        generation = self._generation
        error = await self._deliver(config, body)
        if generation != self._generation:
            return error  # reset while in flight: these reports belong to messages that no longer exist
        self._in_flight = 0
        if error is None:
            self._failures_in_row = 0
            self._acknowledged(batch, now_ms)
        else:
            self._retry_later(batch)
        return error

    async def _deliver(self, config: SimConfig, body: bytes) -> str | None:
        if not config.webhook_url:
            return "no webhook_url configured"
        assert self._client is not None, "dispatcher not started"
        try:
            status = await self._client.post(config.webhook_url, body, config.webhook_headers)
        except Exception as exc:  # any failure to deliver (connect, timeout, bad URL) means: retry later
            return f"webhook unreachable: {type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"webhook answered {status}"

    def _acknowledged(self, batch: list[Span], now_ms: int) -> None:
        c = self.counters
        c.callbacks_ok += 1
        by_status, duplicates = [0, 0, 0], 0
        codes = set(map(_CODE, batch))
        if len(codes) == 1:  # the usual batch: one code for every report
            code = codes.pop()
            by_status[code & STATUS_MASK] = count = sum(map(_COUNT, batch))
            duplicates = count if code & DUPLICATE else 0
            spans_of = {code & STATUS_MASK: batch}
        else:
            spans_of = {SENT: [], DELIVERED: [], FAILURE: []}
            for span in batch:
                _, code, count = span
                by_status[code & STATUS_MASK] += count
                duplicates += count if code & DUPLICATE else 0
                spans_of[code & STATUS_MASK].append(span)
        for status, spans in spans_of.items():
            if status != SENT and spans:
                became_final = self._finalise(
                    list(map(_COUNTER, spans)), list(map(_COUNT, spans)), status, now_ms
                )
                if status == DELIVERED:
                    c.delivered += became_final
                else:
                    c.failed += became_final
        c.sent += by_status[SENT]
        c.duplicates_sent += duplicates
        self._metrics.reports_acknowledged(by_status, duplicates)

    def _retry_later(self, batch: list[Span]) -> None:
        self.counters.callback_errors += 1
        self._metrics.callback_errors.inc()
        self._failures_in_row += 1
        due = monotonic_ms() + min(RETRY_BASE_MS * 2 ** (self._failures_in_row - 1), RETRY_MAX_MS)
        for counter, code, count in batch:
            self._queue.push(due, counter, code, count)
        self._wake.set()
