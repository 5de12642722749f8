"""The produce path of the webhook: records of concurrent requests are coalesced into one record batch per
partition and handed to aiokafka's `send_batch`, so a report costs one append instead of one `send()`.

A record batch is compressed (as the producer is configured) when the request that opens it carries many
records: a batch opened by a small request fills with a few records of concurrent requests, where compressing
costs more CPU than it saves (lz4: ~30 µs per single report), while bodies of hundreds of reports shrink
several times in the log.

A request waits for the broker's acknowledgement (acks=all, as configured on the producer) of every batch that
holds one of its records; only then may it answer 2xx. aiokafka keeps one batch in flight per partition, so
while a batch is out the next one fills up: batching follows the load, with no fixed linger on top. Order per
partition is kept: batches of a partition are handed over one after another, in the order they were filled.

A producer has one produce request in flight per broker, so under many small requests the webhook's rate is
bound by the broker's round trip, not by CPU. `connections` producers split the partitions between them
(partition p always goes through producer p mod n, which keeps its order) and keep n requests in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from dlr_ingest.encoding import partitions_for
from dlr_ingest.settings import DlrIngestSettings
from shared.config import ServiceSettings


class PublishRefused(Exception):
    """Not queued at all: the backlog is full or the broker has stopped answering. Nothing of the request
    was handed over, so the caller answers 503 at once instead of waiting for a timeout."""


class _Waiter:
    """One request's wait: its own future (a caller that gives up cancels nothing shared), resolved once
    each batch holding one of its records is acknowledged."""

    __slots__ = ("future", "left")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.left = 0  # batches still to be acknowledged


@dataclass(eq=False)
class _Batch:
    builder: Any  # aiokafka BatchBuilder
    waiters: list[_Waiter] = field(default_factory=list)
    size: int = 0
    settled: bool = False


@dataclass(eq=False)
class _Lane:
    topic: str
    partition: int
    producer: AIOKafkaProducer
    filling: deque[_Batch] = field(default_factory=deque)
    pump: asyncio.Task[None] | None = None


class BatchPublisher:
    """Publishes keyed records and returns once the broker acknowledged them.

    `max_backlog_bytes` bounds what waits in memory for the broker; `stall_after_s` is how long the oldest
    unacknowledged batch may wait before new requests are refused straight away (the broker is down: every
    caller would only time out)."""

    def __init__(
        self,
        producer_factory: Callable[[], AIOKafkaProducer],
        *,
        max_backlog_bytes: int,
        stall_after_s: float,
        compress_from_records: int = 1,
        batch_bytes: int = 0,
        connections: int = 1,
    ) -> None:
        self._factory = producer_factory
        self.connections = connections
        self.max_backlog_bytes = max_backlog_bytes
        self.compress_from_records = compress_from_records
        self.batch_bytes = batch_bytes  # of an uncompressed batch; 0: every batch as the producer makes it
        self.stall_after_s = stall_after_s
        self._producers: list[AIOKafkaProducer] = []
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._backlog = 0
        # Batch → when it was handed over; inserted in time order, so the first entry is the oldest.
        self._unacked: dict[_Batch, float] = {}

    async def start(self) -> None:
        """Build (aiokafka wants a running loop for that) and connect the producers."""
        for _ in range(self.connections):
            producer = self._factory()
            self._producers.append(producer)
            await producer.start()

    async def stop(self) -> None:
        """Flush what is queued, then disconnect."""
        producers, self._producers, self._lanes = self._producers, [], {}
        for producer in producers:
            await producer.stop()

    @property
    def producer(self) -> AIOKafkaProducer:
        if not self._producers:
            raise RuntimeError("the publisher is not started")
        return self._producers[0]

    @property
    def backlog_bytes(self) -> int:
        return self._backlog

    def stalled(self) -> bool:
        if not self._unacked:
            return False
        return time.monotonic() - next(iter(self._unacked.values())) > self.stall_after_s

    async def publish(
        self, topic: str, records: Sequence[tuple[bytes, bytes]], *, timeout_s: float | None = None
    ) -> None:
        """Publish (key, value) records to `topic`, partitioned like Kafka's default partitioner.

        Returns when every record is acknowledged; raises otherwise (TimeoutError past `timeout_s`; the
        records may still reach the log later: a caller that reports failure must expect duplicates of them,
        never losses)."""
        if not records:
            return
        if self._backlog > self.max_backlog_bytes:
            raise PublishRefused(f"{self._backlog} bytes are already waiting for the broker")
        if self.stalled():
            raise PublishRefused(f"the broker has not acknowledged a batch for over {self.stall_after_s}s")
        partitions = len(await self.producer.partitions_for(topic))
        compressed = len(records) >= self.compress_from_records
        lanes = self._lanes
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        touched: set[_Lane] = set()
        size = 0
        # One tight loop per request: this runs for every report the webhook takes.
        targets = partitions_for([key for key, _ in records], partitions)
        for (key, value), partition in zip(records, targets, strict=True):
            lane = lanes.get((topic, partition)) or self._lane(topic, partition)
            batch = lane.filling[-1] if lane.filling else None
            if (
                batch is None
                or batch.builder.append(timestamp=None, key=key, value=value, headers=[]) is None
            ):
                batch = self._open_batch(lane, compressed)
                # A fresh batch takes any one record, however large (max_request_size still applies).
                batch.builder.append(timestamp=None, key=key, value=value, headers=[])
            added = len(key) + len(value)
            batch.size += added
            size += added
            if not batch.waiters or batch.waiters[-1] is not waiter:
                batch.waiters.append(waiter)
                waiter.left += 1
            touched.add(lane)
        self._backlog += size
        for lane in touched:
            if lane.pump is None:
                lane.pump = asyncio.create_task(self._pump(lane))
        expiry = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter.future, timeout_s)
        try:
            await waiter.future
        finally:
            if expiry is not None:
                expiry.cancel()

    def _lane(self, topic: str, partition: int) -> _Lane:
        producer = self._producers[partition % len(self._producers)]
        lane = self._lanes[(topic, partition)] = _Lane(topic, partition, producer)
        return lane

    def _open_batch(self, lane: _Lane, compressed: bool) -> _Batch:
        if compressed or not self.batch_bytes:
            builder = lane.producer.create_batch()
        else:
            # Record format v2, the one every broker with record headers speaks (the project needs them).
            builder = BatchBuilder(2, self.batch_bytes, 0, is_transactional=False)
        batch = _Batch(builder)
        lane.filling.append(batch)
        return batch

    async def _pump(self, lane: _Lane) -> None:
        """Hand the lane's batches over in order. `send_batch` returns once aiokafka has room for the
        partition (its previous batch was drained); meanwhile records keep filling the next batch."""
        try:
            while lane.filling:
                batch = lane.filling.popleft()
                self._unacked[batch] = time.monotonic()
                try:
                    acked = await lane.producer.send_batch(
                        batch.builder, lane.topic, partition=lane.partition
                    )
                except Exception as exc:
                    self._settle(batch, exc)
                    continue
                acked.add_done_callback(lambda f, b=batch: self._settle(b, _failure(f)))
        finally:
            lane.pump = None

    def _settle(self, batch: _Batch, exc: BaseException | None) -> None:
        if batch.settled:
            return
        batch.settled = True
        self._unacked.pop(batch, None)
        self._backlog -= batch.size
        for waiter in batch.waiters:
            future = waiter.future
            if future.done():  # given up, timed out, or failed by another of its batches
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                waiter.left -= 1
                if not waiter.left:
                    future.set_result(None)


def _expire(future: asyncio.Future[None], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"the broker did not acknowledge within {timeout_s}s"))


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    return asyncio.CancelledError() if future.cancelled() else future.exception()


def make_producer(
    settings: ServiceSettings,
    *,
    linger_ms: int,
    batch_bytes: int,
    request_timeout_ms: int,
    compression: str,
) -> AIOKafkaProducer:
    """A producer of its own for the webhook (not FastStream's): acks and idempotence as configured for
    every service, its own compression; batching left to `BatchPublisher`."""
    k = settings.kafka
    return AIOKafkaProducer(
        bootstrap_servers=k.bootstrap_servers,
        client_id="dlr-ingest-reports",
        acks="all" if k.acks == "all" else int(k.acks),
        enable_idempotence=k.enable_idempotence,
        compression_type=None if compression == "none" else compression,
        linger_ms=linger_ms,
        max_batch_size=batch_bytes,
        max_request_size=max(k.max_request_size, batch_bytes),
        request_timeout_ms=request_timeout_ms,
    )


def publisher_for(settings: DlrIngestSettings) -> BatchPublisher:
    return BatchPublisher(
        lambda: make_producer(
            settings,
            linger_ms=settings.producer_linger_ms,
            batch_bytes=settings.producer_batch_bytes,
            request_timeout_ms=settings.producer_request_timeout_ms,
            compression=settings.producer_compression,
        ),
        max_backlog_bytes=settings.publish_backlog_bytes,
        compress_from_records=settings.producer_compress_from_reports,
        batch_bytes=settings.producer_batch_bytes,
        connections=settings.producer_connections,
        # Past the time a request waits for its acknowledgement, the broker is taken for down.
        stall_after_s=settings.publish_timeout_s,
    )
