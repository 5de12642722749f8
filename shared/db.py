"""PostgreSQL helpers: one pool per service schema, the migrations runner, consumer positions, the outbox."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from shared.events import Envelope, encode

Pool = asyncpg.Pool
# A connection as handed out by a pool or opened directly; every store function takes either.
Conn = asyncpg.Connection | PoolConnectionProxy

OUTBOX_CHANNEL = "outbox"


async def _init_connection(conn: Conn) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """A pool whose connections see `schema` first; migrations create the schema."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": f"{schema},public", "application_name": schema},
        command_timeout=60,
    )
    assert pool is not None
    return pool


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def load_migrations(package: str) -> list[Migration]:
    """The `*.sql` files of `<package>.migrations`, in name order."""
    folder = resources.files(package).joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f"{package}/{f.name}", f.read_text()) for f in files]


async def apply_migrations(dsn: str, schema: str, packages: Sequence[str]) -> list[str]:
    """Apply pending migrations of `packages` (shared first) to `schema`; returns what was applied.

    Replicas starting together serialise on an advisory lock, so each file runs exactly once.
    """
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        lock = int.from_bytes(hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True)
        await conn.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}", public')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for package in packages:
                for migration in load_migrations(package):
                    if migration.name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", migration.name)
                    applied.append(migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    finally:
        await conn.close()
    return applied


# --- consumer positions ------------------------------------------------------------------------------


async def load_positions(
    conn: Conn, consumer: str, partitions: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """Lock and read the stored next offsets of these partitions (0 where none is stored).

    The row lock makes a second consumer that got the same records during a rebalance wait, then skip.
    """
    keys = sorted(set(partitions))
    await conn.execute(
        """INSERT INTO consumer_position (consumer, topic, partition, next_offset)
           SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p)
           ON CONFLICT DO NOTHING""",
        consumer,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    rows = await conn.fetch(
        """SELECT topic, partition, next_offset FROM consumer_position
           WHERE consumer = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))
           ORDER BY topic, partition FOR UPDATE""",
        consumer,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def save_positions(conn: Conn, consumer: str, positions: dict[tuple[str, int], int]) -> None:
    """Advance positions; never moves one backwards."""
    if not positions:
        return
    items = sorted(positions.items())
    await conn.execute(
        """UPDATE consumer_position AS p SET next_offset = u.o
           FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, part, o)
           WHERE p.consumer = $1 AND p.topic = u.t AND p.partition = u.part AND p.next_offset < u.o""",
        consumer,
        [k[0] for k, _ in items],
        [k[1] for k, _ in items],
        [v for _, v in items],
    )


async def all_positions(conn: Conn) -> list[tuple[str, str, int, int]]:
    rows = await conn.fetch("SELECT consumer, topic, partition, next_offset FROM consumer_position")
    return [(r["consumer"], r["topic"], r["partition"], r["next_offset"]) for r in rows]


# --- outbox ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxMessage:
    topic: str
    key: str | None
    envelope: Envelope

    def encoded(self) -> tuple[str, bytes | None, bytes]:
        return self.topic, self.key.encode() if self.key is not None else None, encode(self.envelope)


async def add_outbox(conn: Conn, messages: Sequence[OutboxMessage]) -> None:
    """Write events in the caller's transaction; the relay publishes them after commit, in id order."""
    if not messages:
        return
    rows = [m.encoded() for m in messages]
    await conn.execute(
        "INSERT INTO outbox (topic, key, value) SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )
    await conn.execute("SELECT pg_notify($1, current_schema())", OUTBOX_CHANNEL)
