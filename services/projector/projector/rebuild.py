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
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from projector.projection import CONSUMER
from projector.replay import (
    LogReader,
    Partition,
    apply_poll,
    key_of,
    prepare_session,
    replay_in_workers,
    split,
)
from projector.store import schemas
from projector.store.schemas import READ_MODELS, TableSum
from shared import db
from shared.broker import Delivery

log = logging.getLogger(__name__)

LIVE = "projector"
CATCH_UP_ROUNDS = 5
SMALL_GAP = 20_000  # records left for the locked final step
PARALLEL_FROM = 100_000  # records: below this, starting worker processes costs more than it saves
ADVISORY_REBUILD = "projector.rebuild"


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


async def rebuild(
    dsn: str,
    bootstrap: str,
    *,
    swap: bool = True,
    compare: bool = False,
    keep: bool = False,
    poll_records: int = 5000,
    workers: int = 3,
    parallel_from: int = PARALLEL_FROM,
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
        await prepare_session(conn, target)
        await reader.start()

        async def applier(records: Sequence[Any], good: list[Delivery]) -> None:
            await apply_poll(conn, records, good)

        mark = time.perf_counter()
        ends = await reader.end_offsets()
        if workers > 1 and sum(ends.values()) >= parallel_from:
            reader.hold()
            reader.events += await replay_in_workers(
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
            partitions = [key_of(tp) for tp in reader.partitions]
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
