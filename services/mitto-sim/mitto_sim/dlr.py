"""Delivery-report dispatcher: a due-time heap of planned reports, POSTed in batches to the webhook.

A batch that is not answered 2xx (or not answered at all) goes back on the heap with a backoff: reports are
never dropped, only delayed. Entries carry the message counter, not a store index, so a reset in between
makes stale acknowledgements harmless.
"""

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import httpx
import orjson

from mitto_sim.domain import (
    DELIVERED,
    DUPLICATE,
    SENT,
    STATUS_MASK,
    MessageIds,
    ReportShares,
    plan_reports,
    report_payload,
)
from mitto_sim.metrics import SimMetrics
from mitto_sim.settings import SimConfig

RETRY_BASE_S = 0.1
RETRY_MAX_S = 5.0

# (due on the monotonic clock, message counter, report code)
Entry = tuple[float, int, int]


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


def shares_of(config: SimConfig) -> ReportShares:
    return ReportShares(
        delay_s=config.dlr_delay_ms / 1000,
        jitter_s=config.dlr_jitter_ms / 1000,
        failure=config.dlr_failure_share,
        duplicate=config.dlr_duplicate_share,
        sent_first=config.dlr_sent_first_share,
        out_of_order=config.dlr_out_of_order_share,
        alt_spelling=config.dlr_alt_spelling_share,
    )


class DlrDispatcher:
    """Owns the pending reports. `schedule` is synchronous; sending happens in one background task.

    `finalise(counter, status, now_ms)` is called for each acknowledged final report and returns True the
    first time a message becomes final; only those count as delivered/failed.
    """

    def __init__(
        self,
        config: Callable[[], SimConfig],
        ids: MessageIds,
        finalise: Callable[[int, int, int], bool],
        draw: Callable[[], float],
        metrics: SimMetrics,
    ) -> None:
        self._config = config
        self._ids = ids
        self._finalise = finalise
        self._draw = draw
        self._metrics = metrics
        self._heap: list[Entry] = []
        self._in_flight = 0
        self._failures_in_row = 0
        self._generation = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters = DlrCounters()

    @property
    def pending(self) -> int:
        return len(self._heap) + self._in_flight

    def start(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._task = asyncio.create_task(self._run(), name="mitto-sim-dlr")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def clear(self) -> None:
        """Forget pending reports and counters; a batch in flight is neither counted nor retried."""
        self._heap.clear()
        self._in_flight = 0
        self._failures_in_row = 0
        self._generation += 1
        self.counters.clear()
        self._wake.set()

    def wake(self) -> None:
        """Re-read the config (a new webhook_url may make pending reports sendable)."""
        self._wake.set()

    def schedule(self, first_counter: int, count: int, now: float) -> None:
        """Plan the reports of messages `first_counter .. first_counter + count - 1`, accepted at `now`."""
        heap, push = self._heap, heapq.heappush
        head = heap[0][0] if heap else None
        shares = shares_of(self._config())
        if shares.plain:
            due = now + shares.delay_s
            for counter in range(first_counter, first_counter + count):
                push(heap, (due, counter, DELIVERED))
        else:
            for counter in range(first_counter, first_counter + count):
                for offset, code in plan_reports(self._draw, shares):
                    push(heap, (now + offset, counter, code))
        if heap and (head is None or heap[0][0] < head):
            self._wake.set()

    async def flush(self) -> FlushResult:
        """Send every pending report now, whatever its due time; stops at the first failed callback."""
        sent = 0
        async with self._lock:
            while self._heap:
                batch = self._take(float("inf"))
                error = await self._post(batch)
                if error is not None:
                    return FlushResult(sent, self.pending, error)
                sent += len(batch)
        return FlushResult(sent, self.pending, None)

    async def _run(self) -> None:
        while True:
            wait = self._seconds_to_next()
            if wait is None or wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            async with self._lock:
                batch = self._take(time.monotonic())
                if batch:
                    await self._post(batch)

    def _seconds_to_next(self) -> float | None:
        if not self._heap or not self._config().webhook_url:
            return None
        return self._heap[0][0] - time.monotonic()

    def _take(self, cutoff: float) -> list[Entry]:
        heap, size = self._heap, self._config().dlr_batch_size
        batch: list[Entry] = []
        while heap and heap[0][0] <= cutoff and len(batch) < size:
            batch.append(heapq.heappop(heap))
        self._in_flight = len(batch)
        return batch

    async def _post(self, batch: list[Entry]) -> str | None:
        """POST one batch; on failure put it back with a backoff and return why."""
        config = self._config()
        now_ms = time.time_ns() // 1_000_000
        stamp = iso_ms(now_ms)
        encode = self._ids.encode
        reports = [report_payload(encode(counter), code, stamp) for _, counter, code in batch]
        body = orjson.dumps(reports[0] if len(reports) == 1 and config.dlr_single_object else reports)
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
            response = await self._client.post(
                config.webhook_url,
                content=body,
                headers={"content-type": "application/json", **config.webhook_headers},
            )
        except Exception as exc:  # any failure to deliver (connect, timeout, bad URL) means: retry later
            return f"webhook unreachable: {type(exc).__name__}: {exc}"
        return None if response.is_success else f"webhook answered {response.status_code}"

    def _acknowledged(self, batch: list[Entry], now_ms: int) -> None:
        c = self.counters
        c.callbacks_ok += 1
        for _, counter, code in batch:
            status = code & STATUS_MASK
            if code & DUPLICATE:
                c.duplicates_sent += 1
            if status == SENT:
                c.sent += 1
            elif self._finalise(counter, status, now_ms):
                if status == DELIVERED:
                    c.delivered += 1
                else:
                    c.failed += 1
        self._metrics.reports_acknowledged(batch)

    def _retry_later(self, batch: list[Entry]) -> None:
        self.counters.callback_errors += 1
        self._metrics.callback_errors.inc()
        self._failures_in_row += 1
        due = time.monotonic() + min(RETRY_BASE_S * 2 ** (self._failures_in_row - 1), RETRY_MAX_S)
        for _, counter, code in batch:
            heapq.heappush(self._heap, (due, counter, code))
