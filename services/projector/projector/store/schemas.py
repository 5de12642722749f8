"""SQL of replay: a fresh schema shaped like the live one, the atomic swap, and order-independent checksums.

Schema and table names are identifiers chosen by the projector itself (`projector`,
`projector_rebuild_<ts>`, `projector_retired_<ts>`), validated by `ident`, never taken from a request."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shared.db import Conn

# Rebuilt from the log. Every other table of the live schema (migrations ledger, outbox) moves across as is.
READ_MODELS = (
    "tenants",
    "api_keys",
    "campaigns",
    "batches",
    "recipients",
    "deliveries",
    "parked_reports",
    "runs",
    "parked_outcomes",
    "delivery_breakdown",
    "engagements",
    "applied_events",
)
POSITIONS = "consumer_position"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


def migration_lock_key(schema: str) -> int:
    """The advisory lock `shared.db.apply_migrations` holds while migrating `schema` (same derivation)."""
    return int.from_bytes(hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True)


async def schema_exists(conn: Conn, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema))


async def migrations_applied(conn: Conn, schema: str) -> list[str]:
    rows = await conn.fetch(f"SELECT name FROM {ident(schema)}.schema_migrations ORDER BY name")
    return [r["name"] for r in rows]


@dataclass(frozen=True)
class Index:
    table: str
    name: str
    ddl: str  # for the target schema


async def create_like(conn: Conn, live: str, target: str, tables: Sequence[str]) -> list[Index]:
    """Create `target` with empty UNLOGGED copies of `tables` (columns, defaults, checks, collations),
    their primary keys and unique indexes (the projection's ON CONFLICT needs them). Returns the other
    indexes, to be built once the bulk of the rows is in (faster than maintaining them row by row)."""
    live, target = ident(live), ident(target)
    await conn.execute(f"CREATE SCHEMA {target}")
    deferred: list[Index] = []
    for table in map(ident, tables):
        await conn.execute(
            f"CREATE UNLOGGED TABLE {target}.{table} (LIKE {live}.{table} INCLUDING DEFAULTS "
            "INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)"
        )
        constraints = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
               WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname""",
            f"{live}.{table}",
        )
        for c in constraints:
            await conn.execute(f'ALTER TABLE {target}.{table} ADD CONSTRAINT "{c["conname"]}" {c["def"]}')
        indexes = await conn.fetch(
            """SELECT c.relname AS name, i.indisunique AS is_unique, pg_get_indexdef(i.indexrelid) AS def
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = $1::regclass
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
               ORDER BY c.relname""",
            f"{live}.{table}",
        )
        for ix in indexes:
            ddl = ix["def"].replace(f" ON {live}.{table} ", f" ON {target}.{table} ", 1)
            if f" ON {target}.{table} " not in ddl:
                raise RuntimeError(f"cannot re-target index definition: {ix['def']}")
            if ix["is_unique"]:
                await conn.execute(ddl)
            else:
                deferred.append(Index(table, ix["name"], ddl))
    return deferred


async def finish_table(conn: Conn, target: str, table: str, indexes: Sequence[Index]) -> None:
    """Build the table's deferred indexes, make it durable (WAL-logged) and refresh its statistics."""
    for ix in indexes:
        if ix.table == table:
            await conn.execute(ix.ddl)
    await conn.execute(f"ALTER TABLE {ident(target)}.{ident(table)} SET LOGGED")
    await conn.execute(f"ANALYZE {ident(target)}.{ident(table)}")


async def positions(conn: Conn, schema: str, consumer: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        f"SELECT topic, partition, next_offset FROM {ident(schema)}.{POSITIONS} WHERE consumer = $1",
        consumer,
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def lock_positions(
    conn: Conn, schema: str, consumer: str, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """Lock the positions of every partition, creating missing rows first: a consumer starting on a
    partition it never read would otherwise apply records without waiting for this lock."""
    keys = sorted(set(partitions))
    topics, parts = [k[0] for k in keys], [k[1] for k in keys]
    await conn.execute(
        f"""INSERT INTO {ident(schema)}.{POSITIONS} (consumer, topic, partition, next_offset)
            SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p) ON CONFLICT DO NOTHING""",
        consumer,
        topics,
        parts,
    )
    rows = await conn.fetch(
        f"""SELECT topic, partition, next_offset FROM {ident(schema)}.{POSITIONS}
            WHERE consumer = $1 ORDER BY topic, partition FOR UPDATE""",
        consumer,
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def other_objects(conn: Conn, schema: str, tables: Sequence[str]) -> list[str]:
    """Objects of `schema` that a swap would leave behind: anything but tables (with their indexes,
    owned sequences and TOAST) — a view, say, would keep pointing at the retired tables."""
    rows = await conn.fetch(
        """SELECT c.relname, c.relkind FROM pg_class c
           WHERE c.relnamespace = $1::regnamespace AND c.relkind NOT IN ('r', 'i', 't')
             AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                                                   AND d.deptype IN ('a', 'i')))""",
        schema,
    )
    return [f"{r['relname']} ({r['relkind']})" for r in rows]


async def tables_of(conn: Conn, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind IN ('r', 'p') ORDER BY relname",
        schema,
    )
    return [r["relname"] for r in rows]


async def swap(
    conn: Conn,
    *,
    live: str,
    rebuilt: str,
    retired: str,
    consumer: str,
    rebuilt_positions: dict[tuple[str, int], int],
) -> None:
    """In the caller's transaction, which holds the live positions locked and has brought the rebuild at
    or past them: give the rebuilt schema the live schema's name.

    A live consumer blocked on a position row re-reads it in the old table when we commit, so the old rows
    are first moved to the rebuilt positions: it then skips what the rebuild already applied. Tables that
    are not read models move across unchanged. Renaming a schema takes no lock on its tables: queries in
    flight finish on the old tables, the next ones resolve the name to the new schema."""
    live, rebuilt, retired = ident(live), ident(rebuilt), ident(retired)
    items = sorted(rebuilt_positions.items())
    await conn.execute(
        f"""UPDATE {live}.{POSITIONS} AS p SET next_offset = u.o
            FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, part, o)
            WHERE p.consumer = $1 AND p.topic = u.t AND p.partition = u.part AND p.next_offset < u.o""",
        consumer,
        [k[0] for k, _ in items],
        [k[1] for k, _ in items],
        [v for _, v in items],
    )
    await conn.execute(
        f"INSERT INTO {rebuilt}.{POSITIONS} SELECT * FROM {live}.{POSITIONS} ON CONFLICT DO NOTHING"
    )
    for table in await tables_of(conn, live):
        if table not in READ_MODELS and table != POSITIONS:
            await conn.execute(f"ALTER TABLE {live}.{ident(table)} SET SCHEMA {rebuilt}")
    await conn.execute(f"ALTER SCHEMA {live} RENAME TO {retired}")
    await conn.execute(f"ALTER SCHEMA {rebuilt} RENAME TO {live}")


async def drop_schema(conn: Conn, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {ident(schema)} CASCADE")


@dataclass(frozen=True)
class TableSum:
    rows: int
    checksum: str


async def checksums(conn: Conn, schema: str) -> dict[str, TableSum]:
    """Per read-model table: its row count and the sum of a 64-bit md5 prefix of every row's text, which
    does not depend on row order or physical layout (two schemas of the same shape compare equal exactly
    when they hold the same multiset of rows, up to hash collisions)."""
    out: dict[str, TableSum] = {}
    for table in READ_MODELS:
        row = await conn.fetchrow(
            f"""SELECT count(*) AS n,
                       coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text AS s
                FROM {ident(schema)}.{table} AS t"""
        )
        assert row is not None
        out[table] = TableSum(row["n"], row["s"])
    return out


def digest(sums: dict[str, TableSum]) -> str:
    """One short fingerprint of every table's checksum."""
    text = "\n".join(f"{t}:{s.rows}:{s.checksum}" for t, s in sorted(sums.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
