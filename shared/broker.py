"""Kafka helpers on FastStream/aiokafka: broker factory, topic creation, the log/position sanity check,
dead letters, and the batch consumer that applies effect and position in one PostgreSQL transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from shared import db
from shared.config import APPLY_CHUNK_BYTES, ServiceSettings
from shared.db import Conn
from shared.events import DecodeError, EnvelopeHead, Event, decode
from shared.topics import dead_letter_topic

log = logging.getLogger(__name__)

FETCH_MAX_BYTES = 64 * 1024 * 1024
PARTITION_FETCH_BYTES = 16 * 1024 * 1024
TRANSIENT_BACKOFF_S = 1.0
# A slice is decoded in steps of this many raw bytes (a few milliseconds of work each).
DECODE_STEP_BYTES = 256 * 1024

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class LogPositionMismatch(RuntimeError):
    """Stored consumer positions point past the end of the broker's log: the broker and the
    database do not belong to the same stack (e.g. a fresh in-memory broker beside an old database)."""


async def raw_body(msg: Any) -> Any:
    """Leave bodies as bytes: `decode` parses each event once, into its typed model."""
    return msg.body


def bootstrap_list(servers: str) -> list[str]:
    """`a:9092,b:9092` as a list. FastStream wraps a plain string into a one-element list, which aiokafka
    would then read as one host named `a:9092,b`: a cluster's bootstrap must be split first."""
    return [s.strip() for s in servers.split(",") if s.strip()]


def make_broker(settings: ServiceSettings, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        bootstrap_list(settings.kafka.bootstrap_servers),
        client_id=client_id,
        logger=logging.getLogger("smsflow.kafka"),
        log_level=logging.DEBUG,  # FastStream logs every message at this level; keep it out of INFO
        graceful_timeout=15.0,
        **settings.producer_options(),  # type: ignore[arg-type]
    )


async def ensure_topics(bootstrap: str, topics: Sequence[str], partitions: int, replication: int = 1) -> None:
    """Create missing topics. Existing ones are left as they are (partitions are never shrunk)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(t, num_partitions=partitions, replication_factor=replication)
            for t in topics
            if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service created it meanwhile
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The offset after each partition's last record. ListOffsets alone falls short on the local broker:
    Tansu answers the base offset of the partition's last record batch + 1, so when that batch holds
    several records (an outbox relay's or the webhook's batched produce) the end is read from the batch."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, p in partitions]
        listed = await consumer.end_offsets(tps) if tps else {}
        ends = {(tp.topic, tp.partition): off for tp, off in listed.items()}
        await _read_last_batches(consumer, [tp for tp, off in listed.items() if off > 0], ends)
        return ends
    finally:
        await consumer.stop()


async def _read_last_batches(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    ends: dict[tuple[str, int], int],
    timeout: float = 5.0,
) -> None:
    """Raise each end in `ends` to the offset after the last record found from its listed end - 1 on."""
    if not tps:
        return
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, ends[(tp.topic, tp.partition)] - 1)
    pending = set(tps)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        for tp, records in (await consumer.getmany(*pending, timeout_ms=500)).items():
            if records:
                key = (tp.topic, tp.partition)
                ends[key] = max(ends[key], records[-1].offset + 1)
                pending.discard(tp)


async def assert_positions_within_log(pool: asyncpg.Pool, bootstrap: str) -> None:
    """Refuse to start when a stored position is beyond the partition's end instead of skipping events."""
    async with pool.acquire() as conn:
        stored = await db.all_positions(conn)
    if not stored:
        return
    ends = await end_offsets(bootstrap, [(t, p) for _, t, p, _ in stored])
    beyond = [(c, t, p, o, ends.get((t, p), 0)) for c, t, p, o in stored if o > ends.get((t, p), 0)]
    if beyond:
        c, t, p, o, end = beyond[0]
        raise LogPositionMismatch(
            f"consumer {c} stored position {o} for {t}[{p}] but the log ends at {end} "
            f"({len(beyond)} partitions affected): this database belongs to another broker log. "
            "Start both fresh (make run does) or point KAFKA_BOOTSTRAP_SERVERS at the broker that wrote them."
        )


@dataclass(frozen=True)
class Delivery:
    """One decoded record with its place in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    envelope: EnvelopeHead
    event: Event
    raw: bytes


@dataclass(frozen=True)
class Undecodable:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    reason: str


# Reads one record's value, given its topic; raises DecodeError for what cannot be read.
RecordDecoder = Callable[[str, bytes], tuple[EnvelopeHead, Event]]


def decode_value(topic: str, raw: bytes) -> tuple[EnvelopeHead, Event]:
    return decode(raw)


def decode_records(
    records: Sequence[Any], read: RecordDecoder = decode_value
) -> tuple[list[Delivery], list[Undecodable]]:
    good: list[Delivery] = []
    bad: list[Undecodable] = []
    for r in records:
        try:
            envelope, event = read(r.topic, r.value)
        except DecodeError as exc:
            bad.append(Undecodable(r.topic, r.partition, r.offset, r.key, r.value or b"", str(exc)))
        else:
            good.append(Delivery(r.topic, r.partition, r.offset, r.key, envelope, event, r.value))
    return good, bad


async def dead_letter(
    broker: KafkaBroker,
    consumer: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    reason: str,
) -> None:
    """Publish to the consumer's dead-letter topic (awaited: the position moves only after this)."""
    log.warning("dead-lettered %s[%d]@%d for %s: %s", topic, partition, offset, consumer, reason)
    await broker.publish(
        raw,
        topic=dead_letter_topic(consumer),
        key=key,
        headers={
            "dlq-reason": reason[:2000],
            "dlq-consumer": consumer,
            "dlq-source": f"{topic}:{partition}:{offset}",
        },
    )


def fresh_only(records: Sequence[Any], positions: dict[tuple[str, int], int]) -> list[Any]:
    """Drop records already applied (offset below the stored next offset)."""
    return [r for r in records if r.offset >= positions.get((r.topic, r.partition), 0)]


def next_positions(records: Sequence[Any]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = max(out.get(key, 0), r.offset + 1)
    return out


def byte_slices(records: Sequence[Any], limit: int) -> list[Sequence[Any]]:
    """Consecutive slices of `records` of at most `limit` raw bytes each (a bigger record alone). Records
    of one partition stay in log order across slices, so each slice's positions follow the previous one's."""
    slices: list[Sequence[Any]] = []
    start, size = 0, 0
    for i, r in enumerate(records):
        n = len(r.value or b"")
        if i > start and size + n > limit:
            slices.append(records[start:i])
            start, size = i, 0
        size += n
    if start < len(records):
        slices.append(records[start:])
    return slices


def in_topic_order(records: Sequence[Any], rank: dict[str, int]) -> list[Any]:
    """Records of ranked topics first, by rank, then the rest; the sort is stable, so every partition's
    records keep their log order."""
    last = len(rank)
    return sorted(records, key=lambda r: rank.get(r.topic, last))


Apply = Callable[[Conn, Sequence[Delivery]], Awaitable[None]]


class TimeAlignment:
    """Keeps one topic (the follower) from running ahead of another (the leader) in record time while
    this consumer has leader records to catch up on.

    A consumer behind its log gets partitions in whatever order the fetcher filled its buffers: a poll can
    bring minutes of delivery reports before the send results they refer to, and each such report costs
    a detour (parked, then counted when its send result arrives). Follower records stamped later than the
    newest leader record handed over are held: their partition is rewound to the first of them and paused,
    and resumed once the leader has passed that time or caught up. Only the order changes; every record is
    applied, and a leader that stalls releases the hold after `max_hold_s`."""

    def __init__(self, follower: str, leader: str, *, max_hold_s: float = 5.0) -> None:
        self.follower = follower
        self.leader = leader
        self.max_hold_s = max_hold_s
        self.newest: dict[int, int] = {}  # leader partition → newest timestamp handed over
        self.held: dict[TopicPartition, int] = {}  # paused follower partition → its first held timestamp
        self._watchdog: asyncio.TimerHandle | None = None

    async def split(self, records: Sequence[Any], consumer: AIOKafkaConsumer) -> list[Any]:
        """The records to apply now, in their order; the others are held (see the class)."""
        # Per record, only plain comparisons: a poll holds up to tens of thousands of them.
        leader, follower, newest, never = self.leader, self.follower, self.newest, float("-inf")
        for r in records:
            if r.topic == leader and r.timestamp > newest.get(r.partition, never):
                newest[r.partition] = r.timestamp
        assigned = consumer.assignment()
        watermark = await self._watermark(consumer, assigned)
        due = [tp for tp, at in self.held.items() if at <= watermark or tp not in assigned]
        self._resume(consumer, due, assigned)
        keep: list[Any] = []
        first_held: dict[int, Any] = {}  # follower partition → its first record held
        for r in records:
            if r.topic == follower:
                if r.partition in first_held:
                    continue
                if r.timestamp > watermark:
                    first_held[r.partition] = r
                    continue
            keep.append(r)
        for partition, r in first_held.items():
            tp = TopicPartition(follower, partition)
            consumer.seek(tp, r.offset)
            consumer.pause(tp)
            self.held[tp] = r.timestamp
        if first_held:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = asyncio.get_running_loop().call_later(
                self.max_hold_s, lambda: self._resume(consumer, list(self.held), consumer.assignment())
            )
        return keep

    async def _watermark(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> float:
        """The time up to which follower records may go: the oldest of the newest timestamps of the leader
        partitions still behind (-inf for one behind that handed nothing over yet), +inf if none is."""
        behind: list[float] = []
        for tp in assigned:
            if tp.topic != self.leader:
                continue
            end = consumer.highwater(tp)
            if end is not None and await consumer.position(tp) < end:
                behind.append(self.newest.get(tp.partition, float("-inf")))
        return min(behind, default=float("inf"))

    def _resume(
        self, consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], assigned: set[TopicPartition]
    ) -> None:
        for tp in partitions:
            self.held.pop(tp, None)
        if not self.held and self._watchdog is not None:
            self._watchdog.cancel()  # nothing left to release
            self._watchdog = None
        mine = [tp for tp in partitions if tp in assigned]
        if mine:
            consumer.resume(*mine)


class BatchConsumer:
    """Consumes batches and applies them with their positions in one transaction.

    Already-applied offsets are filtered out under a row lock on the positions, so redelivery after a
    crash or rebalance changes nothing. An event that cannot be decoded, or whose application fails for
    a non-transient reason, goes to the dead-letter topic with the reason and the batch goes on.
    Transient failures (database or network down) are raised: the batch is rewound and retried.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        pool_ref: Callable[[], asyncpg.Pool],
        consumer: str,
        apply: Apply,
        *,
        read: RecordDecoder = decode_value,
        topic_order: Sequence[str] = (),
        alignment: TimeAlignment | None = None,
    ) -> None:
        self.broker = broker
        self.pool_ref = pool_ref
        self.consumer = consumer
        self.apply = apply
        self.read = read  # a consumer that keeps only part of an event may read only that part
        # Within a poll, records of these topics go first, in this order (each partition's order kept):
        # a poll applied in several slices then applies, say, a campaign's facts before its batches'.
        self.topic_rank = {t: i for i, t in enumerate(topic_order)}
        self.alignment = alignment
        self.chunk_bytes = APPLY_CHUNK_BYTES  # subscribe() takes the configured value

    def subscribe(self, settings: ServiceSettings, *topics: str, max_records: int | None = None) -> None:
        k = settings.kafka
        self.broker.subscriber(
            *topics,
            group_id=self.consumer,
            batch=True,
            max_records=max_records or k.max_batch_records,
            batch_timeout_ms=50,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.partition_fetch_bytes,
            decoder=raw_body,
        )(self.handle)
        self.chunk_bytes = k.apply_chunk_bytes

    async def handle(self, body: Any, msg: KafkaMessage) -> None:
        records = list(msg.raw_message)
        if self.alignment is not None:
            # Before anything is applied or acknowledged: the commit that follows sees the rewound positions.
            records = await self.alignment.split(records, msg.consumer)
        try:
            await self.process(records)
        except TRANSIENT_ERRORS:
            log.exception("%s: transient failure, the batch will be retried", self.consumer)
            await asyncio.sleep(TRANSIENT_BACKOFF_S)
            raise

    async def process(self, records: Sequence[Any]) -> None:
        """Apply the poll slice by slice, in order, each in its own transaction. A slice is read while
        the one before it is being applied, so the decoding here and the work inside PostgreSQL overlap
        instead of taking turns."""
        applying: asyncio.Task[None] | None = None
        if self.topic_rank:
            records = in_topic_order(records, self.topic_rank)
        try:
            for chunk in byte_slices(records, self.chunk_bytes):
                read = await self._read(chunk)
                if applying is not None:
                    await applying
                applying = asyncio.create_task(self._apply_slice(chunk, *read))
            if applying is not None:
                await applying
        finally:
            if applying is not None and not applying.done():
                applying.cancel()
                await asyncio.gather(applying, return_exceptions=True)

    async def _read(self, records: Sequence[Any]) -> tuple[list[Delivery], list[Undecodable]]:
        """Decode in steps of a few hundred kilobytes, letting the slice being applied send its next
        statement in between. Records already applied are read too (rare: a redelivery) and dropped
        under the positions' lock."""
        good: list[Delivery] = []
        bad: list[Undecodable] = []
        for step in byte_slices(records, DECODE_STEP_BYTES):
            g, b = decode_records(step, self.read)
            good += g
            bad += b
            await asyncio.sleep(0)
        return good, bad

    async def _apply_slice(
        self, records: Sequence[Any], decoded: list[Delivery], undecodable: list[Undecodable]
    ) -> None:
        pool = self.pool_ref()
        async with pool.acquire() as conn, conn.transaction():
            positions = await db.load_positions(
                conn, self.consumer, {(r.topic, r.partition) for r in records}
            )
            fresh = fresh_only(records, positions)
            if not fresh:
                return
            good = fresh_only(decoded, positions)
            bad = fresh_only(undecodable, positions)
            for u in bad:
                await dead_letter(
                    self.broker,
                    self.consumer,
                    topic=u.topic,
                    partition=u.partition,
                    offset=u.offset,
                    key=u.key,
                    raw=u.raw,
                    reason=u.reason,
                )
            if good:
                await self._apply_or_isolate(conn, good)
            await db.save_positions(conn, self.consumer, next_positions(fresh))

    async def _apply_or_isolate(self, conn: Conn, good: list[Delivery]) -> None:
        try:
            async with conn.transaction():
                await self.apply(conn, good)
            return
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            log.exception("%s: batch of %d failed; applying one by one", self.consumer, len(good))
        for d in good:
            try:
                async with conn.transaction():
                    await self.apply(conn, [d])
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                await dead_letter(
                    self.broker,
                    self.consumer,
                    topic=d.topic,
                    partition=d.partition,
                    offset=d.offset,
                    key=d.key,
                    raw=d.raw,
                    reason=f"{type(exc).__name__}: {exc}",
                )
