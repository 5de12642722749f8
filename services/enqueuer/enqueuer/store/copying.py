"""A new campaign's recipients written with COPY, the way the raw rate is measured, rather than with
INSERT ... SELECT: a second connection runs the audience query as `COPY (...) TO STDOUT`, and its rows go both
into `COPY recipients FROM STDIN` on the enqueue's connection and past the planner, which encodes the batches
as they stream by (no second read of a million rows). Three processes share the work: the reading backend,
the writing backend and this one.

The planned batches cannot be written while the connection is busy with the COPY: they wait in a spool (in
memory up to 16 MB, then in a temporary file), and are copied into the outbox and run_batches right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import asyncpg

from enqueuer.store import contacts
from enqueuer.store.runs import PlannedRows
from shared.db import Conn

COLUMNS = ("id", "campaign_id", "phone", "values_json")  # the order of the source query's columns
QUEUE_CHUNKS = 32  # COPY data chunks (~100-200 KB) between the two connections
SPOOL_IN_MEMORY = 16 * 1024 * 1024
_LENGTH = struct.Struct(">I")


@dataclass
class SourceQuery:
    """A SELECT of (id, campaign_id, phone, values_json) run with COPY, which takes no parameters: its
    values travel as settings of the reading transaction (`bind`), rendered to text by PostgreSQL itself."""

    sql: str = ""
    settings: list[tuple[str, Any, str]] = field(default_factory=list)

    def bind(self, value: Any, pg_type: str) -> str:
        """An uncorrelated sub-select, evaluated once per query rather than once per row; an array's is an
        ARRAY(...) expression, since `= ANY ((SELECT ...))` would read a sub-select's rows, not an array."""
        name = f"enqueuer.audience_{len(self.settings)}"
        self.settings.append((name, value, pg_type))
        if pg_type.endswith("[]"):
            return f"ARRAY(SELECT unnest(current_setting('{name}')::{pg_type}))"
        return f"(SELECT current_setting('{name}')::{pg_type})"


def contacts_source(
    campaign_id: str, tenant_id: str, spec: dict[str, Any], *, marketing: bool, placeholders: Sequence[str]
) -> SourceQuery:
    """The eligible contacts of an audience spec as new recipients (ids drawn from recipients' sequence)."""
    source = SourceQuery()
    where = contacts.audience_where(spec, marketing=marketing, bind=source.bind)
    source.sql = f"""SELECT nextval('recipients_id_seq'), {_uuid(campaign_id)}, c.phone,
                            {contacts.values_expr(placeholders)}
                     FROM contacts c WHERE c.tenant_id = {_uuid(tenant_id)} AND {where}"""
    return source


def inline_source(campaign_id: str, tenant_id: str) -> SourceQuery:
    """The inline audience as new recipients, opted-out phones left out (as `runs.materialise_inline`)."""
    return SourceQuery(
        f"""SELECT nextval('recipients_id_seq'), a.campaign_id, a.phone, a."values"::text
            FROM campaign_audience a
            WHERE a.campaign_id = {_uuid(campaign_id)} AND NOT EXISTS (
                SELECT 1 FROM contacts c WHERE c.tenant_id = {_uuid(tenant_id)} AND c.phone = a.phone
                    AND c.opted_out_at IS NOT NULL)
            ORDER BY a.phone"""
    )


def _uuid(value: str) -> str:
    """A uuid literal; uuid.UUID accepts nothing but hex digits, so the text is safe inside the SQL."""
    return f"'{uuid.UUID(value)}'::uuid"


@asynccontextmanager
async def reader_connection(pool: asyncpg.Pool | None, timeout: float) -> AsyncIterator[Conn | None]:
    """A second connection for the source query, or None when the pool has none to spare in time (the
    caller then materialises with INSERT ... SELECT on its own connection)."""
    if pool is None:
        yield None
        return
    try:
        conn = await pool.acquire(timeout=timeout)
    except TimeoutError:
        yield None
        return
    try:
        yield conn
    finally:
        await pool.release(conn)


async def copy_into_recipients(
    conn: Conn, reader: Conn, source: SourceQuery, on_rows: Callable[[str], None]
) -> int:
    """COPY the rows of `source` (read on `reader`) into recipients on `conn`; `on_rows` gets every row, in
    order, as COPY text (tab-separated, a newline after each, a backslash in a value doubled), whole rows at a
    time. Returns the rows written.
    Must run inside `conn`'s transaction: a failure on either side leaves an error, never a partial copy."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
    rest = b""

    async def received(data: bytes) -> None:
        nonlocal rest
        chunk = bytes(data)
        await queue.put(chunk)
        if rest:
            chunk = rest + chunk
        cut = chunk.rfind(b"\n") + 1  # COPY text escapes newlines inside values: rows end at "\n"
        rest = chunk[cut:]
        if cut:
            on_rows(chunk[:cut].decode())

    async def read() -> None:
        try:
            async with reader.transaction():
                for name, value, pg_type in source.settings:
                    await reader.execute(f"SELECT set_config($1, $2::{pg_type}::text, true)", name, value)
                await reader.copy_from_query(source.sql, output=received)
        finally:
            await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    reading = asyncio.ensure_future(read())
    try:
        status = await conn.copy_to_table("recipients", source=chunks(), columns=COLUMNS)
    except BaseException:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        raise
    await reading  # a source that failed ended the copy early: its error, not the partial count
    if rest:
        raise RuntimeError("the audience copy ended inside a row")
    return int(status.split()[-1])


@contextmanager
def batch_spool(topic: str, key: bytes) -> Iterator[BatchSpool]:
    with (
        tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as values,
        tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+") as batches,
    ):
        yield BatchSpool(topic, key, values, batches)


class BatchSpool:
    """Planned batches waiting for the connection: outbox values and run_batches rows, in planning order."""

    def __init__(self, topic: str, key: bytes, values: IO[bytes], batches: IO[str]) -> None:
        self.topic, self.key = topic, key
        self._values, self._batches = values, batches

    def add(self, planned: PlannedRows) -> None:
        for value in planned.values:
            self._values.write(_LENGTH.pack(len(value)))
            self._values.write(value)
        for batch_id, number, size, cost, ids in planned.batches:
            self._batches.write(f"{batch_id}\t{number}\t{size}\t{cost}\t{ids}\n")

    async def write(self, conn: Conn, run_token: str) -> None:
        """COPY the spooled rows into the outbox (in order: ids follow it) and run_batches."""
        self._values.seek(0)
        self._batches.seek(0)

        async def outbox_rows() -> AsyncIterator[tuple[str, bytes, bytes]]:
            while header := self._values.read(_LENGTH.size):
                yield self.topic, self.key, self._values.read(_LENGTH.unpack(header)[0])

        async def batch_lines() -> AsyncIterator[bytes]:
            for line in self._batches:  # batch ids, numbers and id arrays need no COPY escaping
                batch_id, rest = line.split("\t", 1)
                yield f"{batch_id}\t{run_token}\t{rest}".encode()

        await conn.copy_records_to_table("outbox", records=outbox_rows(), columns=("topic", "key", "value"))
        await conn.copy_to_table(
            "run_batches",
            source=batch_lines(),
            columns=("batch_id", "run_token", "batch_no", "size", "cost", "recipient_ids"),
        )
