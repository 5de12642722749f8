"""Replay: rebuild every read model from offset 0 into a fresh schema and swap it in atomically while the
API keeps answering; or build it and compare it with the live one by checksum.

1. `projector_rebuild_<ts>` gets empty unlogged copies of the read-model tables (unique indexes only).
2. A throwaway consumer (no group) reads every partition from offset 0 up to the end offsets taken at
   start, applying each poll with the projection's own `apply` under a search_path naming the new schema
   (decoding the next poll while PostgreSQL applies this one).
3. The other indexes are built, the tables made durable (SET LOGGED), and the rebuild catches up with the
   live positions until the gap is small.
4. One transaction locks every live position (the live consumer now waits), applies the last records up
   to exactly those positions, and renames schemas: `projector` → `projector_retired_<ts>`, the rebuild →
   `projector`. The API's connections resolve table names through `search_path=projector`, so each
   statement after the commit reads the new tables; a statement in flight finishes on the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from projector import projection
from projector.projection import CONSUMER, TOPICS
from projector.store import schemas
from projector.store.schemas import READ_MODELS, TableSum
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

LIVE = "projector"
CATCH_UP_ROUNDS = 5
SMALL_GAP = 20_000  # records left for the locked final step
PARALLEL_FROM = 100_000  # records: below this, starting worker processes costs more than it saves
ADVISORY_REBUILD = "projector.rebuild"

Partition = tuple[str, int]


class RebuildRefused(RuntimeError):
    """The rebuild cannot go on safely (another one runs, a migration ran meanwhile, ...)."""


@dataclass
class RebuildResult:
    schema: str
    swapped: bool
    retired: str | None
    events: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    positions: dict[Partition, int] = field(default_factory=dict)
    live_sums: dict[str, TableSum] | None = None
    rebuilt_sums: dict[str, TableSum] | None = None

    @property
    def equal(self) -> bool | None:
        if self.live_sums is None or self.rebuilt_sums is None:
            return None
        return self.live_sums == self.rebuilt_sums

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "swapped": self.swapped,
            "retired": self.retired,
            "events": self.events,
            "seconds": round(self.seconds, 2),
            "phases": {k: round(v, 2) for k, v in self.phases.items()},
            "positions": {f"{t}[{p}]": o for (t, p), o in sorted(self.positions.items())},
        }
        if self.live_sums is not None and self.rebuilt_sums is not None:
            out["checksums"] = {
                "live": schemas.digest(self.live_sums),
                "rebuilt": schemas.digest(self.rebuilt_sums),
                "equal": self.equal,
                "tables": {
                    t: {"live": vars(self.live_sums[t]), "rebuilt": vars(self.rebuilt_sums[t])}
                    for t in READ_MODELS
                },
            }
        return out


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
        self.next = {_key(tp): 0 for tp in self.partitions}

    async def stop(self) -> None:
        await self.consumer.stop()

    def skip_to(self, positions: dict[Partition, int]) -> None:
        """Continue from `positions` (what other readers applied)."""
        for tp in self.partitions:
            if _key(tp) in positions:
                self.consumer.seek(tp, positions[_key(tp)])
                self.next[_key(tp)] = positions[_key(tp)]

    async def end_offsets(self) -> dict[Partition, int]:
        ends = await self.consumer.end_offsets(self.partitions) if self.partitions else {}
        return {_key(tp): o for tp, o in ends.items()}

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
        pending = [tp for tp in self.partitions if self.next[_key(tp)] < targets.get(_key(tp), 0)]
        queue: asyncio.Queue[tuple[list[Any], list[Delivery]]] = asyncio.Queue(maxsize=2)

        async def fetch() -> None:
            while pending:
                batch = await self.consumer.getmany(*pending, timeout_ms=500, max_records=self.poll_records)
                records: list[Any] = []
                for tp, recs in batch.items():
                    records += [r for r in recs if r.offset < targets[_key(tp)]] if exact else recs
                for tp in list(pending):
                    position = await self.consumer.position(tp)
                    reached = min(position, targets[_key(tp)]) if exact else position
                    self.next[_key(tp)] = max(self.next[_key(tp)], reached)
                    if self.next[_key(tp)] >= targets[_key(tp)]:
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


def _key(tp: TopicPartition) -> Partition:
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
        await _prepare_session(conn, part.schema)
        await reader.start()

        async def applier(records: Sequence[Any], good: list[Delivery]) -> None:
            await apply_poll(conn, records, good)

        await reader.read_to(part.targets, applier, exact=True)
        return reader.events
    finally:
        await reader.stop()
        await conn.close()


async def _prepare_session(conn: Conn, schema: str) -> None:
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


async def rebuild(
    dsn: str,
    bootstrap: str,
    *,
    swap: bool = True,
    compare: bool = False,
    keep: bool = False,
    poll_records: int = 5000,
    workers: int = 3,
    stamp: str | None = None,
) -> RebuildResult:
    """Rebuild every read model from offset 0. `swap`: make it the live schema (the old one is dropped
    unless `keep`). `compare`: checksum both schemas at the same positions, under the lock (seconds on
    large tables, during which the live projection waits). Without `swap`, the rebuilt schema is dropped
    after the comparison unless `keep`."""
    stamp = stamp or f"{time.strftime('%Y%m%d%H%M%S')}_{secrets.token_hex(2)}"
    target, retired = f"projector_rebuild_{stamp}", f"projector_retired_{stamp}"
    started = time.perf_counter()
    phases: dict[str, float] = {}
    conn: asyncpg.Connection = await asyncpg.connect(dsn, command_timeout=None)
    reader = LogReader(bootstrap, poll_records)
    result = RebuildResult(schema=target, swapped=False, retired=None, events=0, seconds=0.0)
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", ADVISORY_REBUILD):
            raise RebuildRefused("another rebuild is running")
        if not await schemas.schema_exists(conn, LIVE):
            raise RebuildRefused(f"no live schema {LIVE!r}: run `python -m projector migrate` first")
        migrations = await schemas.migrations_applied(conn, LIVE)
        leftovers = await schemas.other_objects(conn, LIVE, READ_MODELS)
        if leftovers:
            raise RebuildRefused(f"the live schema holds objects a swap would strand: {', '.join(leftovers)}")
        deferred = await schemas.create_like(conn, LIVE, target, (*READ_MODELS, schemas.POSITIONS))
        await _prepare_session(conn, target)
        await reader.start()

        async def applier(records: Sequence[Any], good: list[Delivery]) -> None:
            await apply_poll(conn, records, good)

        mark = time.perf_counter()
        ends = await reader.end_offsets()
        if workers > 1 and sum(ends.values()) >= PARALLEL_FROM:
            reader.events += await _replay_in_workers(
                dsn, bootstrap, target, split(ends, workers), poll_records
            )
            reader.skip_to(ends)
        else:
            await reader.read_to(ends, applier)
        phases["replay"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await _finish_tables(dsn, target, (*READ_MODELS, schemas.POSITIONS), deferred)
        phases["indexes_and_logging"] = time.perf_counter() - mark
        mark = time.perf_counter()
        for _ in range(CATCH_UP_ROUNDS):
            live = await schemas.positions(conn, LIVE, CONSUMER)
            if sum(max(0, o - reader.next.get(k, 0)) for k, o in live.items()) <= SMALL_GAP:
                break
            await reader.read_to(live, applier)
        phases["catch_up"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await conn.execute("SET synchronous_commit TO on")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", schemas.migration_lock_key(LIVE))
            if await schemas.migrations_applied(conn, LIVE) != migrations:
                raise RebuildRefused("a migration ran during the rebuild; run the rebuild again")
            partitions = [_key(tp) for tp in reader.partitions]
            live = await schemas.lock_positions(conn, LIVE, CONSUMER, partitions)
            await reader.read_to(live, applier, exact=True)
            # Partitions the rebuild read no further than the live consumer (or read nothing of).
            await db.load_positions(conn, CONSUMER, live)
            await db.save_positions(conn, CONSUMER, live)
            rebuilt = await schemas.positions(conn, target, CONSUMER)
            result.positions = rebuilt
            if compare:
                if any(rebuilt.get(k, 0) != o for k, o in live.items()):
                    log.warning(
                        "the rebuild read past the live positions; checksums compare different moments"
                    )
                result.live_sums = await schemas.checksums(conn, LIVE)
                result.rebuilt_sums = await schemas.checksums(conn, target)
            if swap:
                await schemas.swap(
                    conn,
                    live=LIVE,
                    rebuilt=target,
                    retired=retired,
                    consumer=CONSUMER,
                    rebuilt_positions=rebuilt,
                )
                result.swapped, result.retired = True, retired
        phases["final_step"] = time.perf_counter() - mark
        if swap and not keep:
            await schemas.drop_schema(conn, retired)
            result.retired = None
        if not swap and not keep:
            await schemas.drop_schema(conn, target)
    except BaseException:
        if not result.swapped:
            await asyncio.shield(_drop_quietly(conn, target))
        raise
    finally:
        await reader.stop()
        await conn.close()
    result.events = reader.events
    result.seconds = time.perf_counter() - started
    result.phases = phases
    return result


async def _finish_tables(
    dsn: str, schema: str, tables: Sequence[str], indexes: Sequence[schemas.Index]
) -> None:
    """Tables side by side, each on its own connection: rewriting them into the WAL is most of the time."""

    async def finish(table: str) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, command_timeout=None)
        try:
            await schemas.finish_table(conn, schema, table, indexes)
        finally:
            await conn.close()

    await asyncio.gather(*[finish(t) for t in tables])


async def _replay_in_workers(
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


async def _drop_quietly(conn: asyncpg.Connection, schema: str) -> None:
    try:
        await schemas.drop_schema(conn, schema)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        log.warning("could not drop %s; drop it by hand", schema)


async def checksum(dsn: str, against: str | None = None) -> dict[str, Any]:
    """Checksums of the live read models and, with `against`, of another schema of the same shape (a kept
    rebuild or retired schema), with the positions each was built to."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, command_timeout=None)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            live = await schemas.checksums(conn, LIVE)
            live_at = await schemas.positions(conn, LIVE, CONSUMER)
            out: dict[str, Any] = {"live": _described(LIVE, live, live_at)}
            if against:
                if not await schemas.schema_exists(conn, against):
                    raise RebuildRefused(f"no schema {against!r}")
                other = await schemas.checksums(conn, against)
                other_at = await schemas.positions(conn, against, CONSUMER)
                out["against"] = _described(against, other, other_at)
                out["equal"] = live == other
                out["samePositions"] = live_at == other_at
                out["differentTables"] = [t for t in READ_MODELS if live[t] != other[t]]
        return out
    finally:
        await conn.close()


def _described(schema: str, sums: dict[str, TableSum], at: dict[Partition, int]) -> dict[str, Any]:
    return {
        "schema": schema,
        "digest": schemas.digest(sums),
        "tables": {t: vars(s) for t, s in sums.items()},
        "positions": {f"{t}[{p}]": o for (t, p), o in sorted(at.items())},
    }
