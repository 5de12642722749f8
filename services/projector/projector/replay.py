"""Reading the log for a rebuild: a throwaway consumer over chosen partitions from offset 0, polls applied
the way the live consumer applies them, and worker processes that replay parts of a large log side by side."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from projector import projection
from projector.projection import CONSUMER, TOPICS
from projector.store import schemas
from shared import db
from shared.broker import (
    FETCH_MAX_BYTES,
    PARTITION_FETCH_BYTES,
    TRANSIENT_ERRORS,
    Delivery,
    bootstrap_list,
    decode_records,
    next_positions,
)
from shared.db import Conn

log = logging.getLogger(__name__)

Partition = tuple[str, int]


class LogReader:
    """Every partition of the projector's topics from offset 0, without a consumer group, so nothing it
    reads moves the live consumer's committed offsets."""

    def __init__(self, bootstrap: str, poll_records: int, only: Sequence[Partition] | None = None) -> None:
        self.only = list(only) if only is not None else None
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_list(bootstrap),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_bytes=FETCH_MAX_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        )
        self.poll_records = poll_records
        self.partitions: list[TopicPartition] = []
        self.next: dict[Partition, int] = {}
        self.events = 0

    async def start(self) -> None:
        await self.consumer.start()
        if self.only is not None:
            self.partitions = [TopicPartition(t, p) for t, p in self.only]
        else:
            await self.consumer._client.force_metadata_update()
            self.partitions = [
                TopicPartition(t, p)
                for t in TOPICS
                for p in sorted(self.consumer.partitions_for_topic(t) or ())
            ]
        self.consumer.assign(self.partitions)
        if self.partitions:
            await self.consumer.seek_to_beginning(*self.partitions)
        self.next = {key_of(tp): 0 for tp in self.partitions}

    async def stop(self) -> None:
        await self.consumer.stop()

    def hold(self) -> None:
        """Stop fetching (while other readers replay): nothing is read ahead for nothing."""
        if self.partitions:
            self.consumer.pause(*self.partitions)

    def skip_to(self, positions: dict[Partition, int]) -> None:
        """Continue from `positions` (what other readers applied)."""
        for tp in self.partitions:
            if key_of(tp) in positions:
                self.consumer.seek(tp, positions[key_of(tp)])
                self.next[key_of(tp)] = positions[key_of(tp)]
        if self.partitions:
            self.consumer.resume(*self.partitions)

    async def end_offsets(self) -> dict[Partition, int]:
        ends = await self.consumer.end_offsets(self.partitions) if self.partitions else {}
        return {key_of(tp): o for tp, o in ends.items()}

    async def read_to(
        self,
        targets: dict[Partition, int],
        apply_poll: Callable[[Sequence[Any], list[Delivery]], Awaitable[None]],
        *,
        exact: bool = False,
    ) -> None:
        """Apply every record below `targets` not applied yet. `exact`: apply nothing at or past a target
        (the reader is no use afterwards); otherwise whole polls are applied, possibly past a target.

        The next poll is fetched and decoded while PostgreSQL applies the current one."""
        pending = [tp for tp in self.partitions if self.next[key_of(tp)] < targets.get(key_of(tp), 0)]
        queue: asyncio.Queue[tuple[list[Any], list[Delivery]]] = asyncio.Queue(maxsize=2)

        async def fetch() -> None:
            while pending:
                batch = await self.consumer.getmany(*pending, timeout_ms=500, max_records=self.poll_records)
                records: list[Any] = []
                for tp, recs in batch.items():
                    records += [r for r in recs if r.offset < targets[key_of(tp)]] if exact else recs
                for tp in list(pending):
                    position = await self.consumer.position(tp)
                    reached = min(position, targets[key_of(tp)]) if exact else position
                    self.next[key_of(tp)] = max(self.next[key_of(tp)], reached)
                    if self.next[key_of(tp)] >= targets[key_of(tp)]:
                        pending.remove(tp)
                        if exact:
                            self.consumer.pause(tp)
                if records:
                    good, _ = decode_records(records)  # the live consumer dead-lettered the others
                    await queue.put((records, good))

        fetcher = asyncio.create_task(fetch())
        try:
            while True:
                if fetcher.done() and queue.empty():
                    fetcher.result()  # the fetch's error, if it failed
                    return
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, fetcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                records, good = getter.result()
                await apply_poll(records, good)
                self.events += len(records)
        finally:
            if not fetcher.done():
                fetcher.cancel()
                await asyncio.gather(fetcher, return_exceptions=True)


def key_of(tp: TopicPartition) -> Partition:
    return (tp.topic, tp.partition)


@dataclass(frozen=True)
class ReplayPart:
    """Partitions one worker process replays from offset 0 into a rebuild's schema."""

    dsn: str
    bootstrap: str
    schema: str
    targets: dict[Partition, int]
    poll_records: int


def replay_part(part: ReplayPart) -> int:
    """Entry point of a replay worker process; returns the records it applied."""
    return asyncio.run(_replay_part(part))


async def _replay_part(part: ReplayPart) -> int:
    conn: asyncpg.Connection = await asyncpg.connect(part.dsn, command_timeout=None)
    reader = LogReader(part.bootstrap, part.poll_records, only=list(part.targets))
    try:
        await prepare_session(conn, part.schema)
        await reader.start()

        async def applier(records: Sequence[Any], good: list[Delivery]) -> None:
            await apply_poll(conn, records, good)

        await reader.read_to(part.targets, applier, exact=True)
        return reader.events
    finally:
        await reader.stop()
        await conn.close()


async def prepare_session(conn: Conn, schema: str) -> None:
    await conn.execute(f"SET search_path TO {schemas.ident(schema)}, public")
    # Until the swap nothing here needs to survive a crash (an interrupted rebuild starts over), so
    # commits need not wait for the WAL; the swap itself commits synchronously.
    await conn.execute("SET synchronous_commit TO off")


def split(ends: dict[Partition, int], workers: int) -> list[dict[Partition, int]]:
    """Partitions dealt to `workers` parts of about equal record counts (largest first, to the lightest)."""
    parts: list[dict[Partition, int]] = [{} for _ in range(max(1, workers))]
    loads = [0] * len(parts)
    for key, end in sorted(ends.items(), key=lambda kv: -kv[1]):
        i = loads.index(min(loads))
        parts[i][key] = end
        loads[i] += end
    return [p for p in parts if p]


async def apply_poll(conn: Conn, records: Sequence[Any], good: list[Delivery]) -> None:
    """One poll into the schema on the connection's search_path, with its positions, the way the live
    `BatchConsumer` does it: an event whose application fails for a non-transient reason is skipped (the
    live consumer dead-lettered the same event), so both sides hold the same rows."""
    async with conn.transaction():
        await db.load_positions(conn, CONSUMER, {(r.topic, r.partition) for r in records})
        if good:
            try:
                async with conn.transaction():
                    await projection.apply(conn, good)
            except TRANSIENT_ERRORS:
                raise
            except Exception:
                for d in good:
                    try:
                        async with conn.transaction():
                            await projection.apply(conn, [d])
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception as exc:
                        log.warning(
                            "skipped %s[%d]@%d as the live consumer did: %s",
                            d.topic,
                            d.partition,
                            d.offset,
                            exc,
                        )
        await db.save_positions(conn, CONSUMER, next_positions(records))


async def replay_in_workers(
    dsn: str, bootstrap: str, schema: str, parts: list[dict[Partition, int]], poll_records: int
) -> int:
    """Each part in its own process: decoding is most of a replay's CPU and runs side by side; the
    projection's per-schema lock still applies one poll at a time, so the result is the same."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
        counts = await asyncio.gather(
            *[
                loop.run_in_executor(
                    pool, replay_part, ReplayPart(dsn, bootstrap, schema, part, poll_records)
                )
                for part in parts
            ]
        )
    return sum(counts)
