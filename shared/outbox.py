"""The outbox relay: publishes committed outbox rows to Kafka in id order, then deletes them.

At-least-once: a crash between the broker's ack and the delete publishes those rows again, which
consumers absorb (they are idempotent). One relay per schema holds a session advisory lock, so order
within the schema's outbox is kept even with several replicas of a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable

import asyncpg
from faststream.kafka import KafkaBroker

from shared.db import OUTBOX_CHANNEL

log = logging.getLogger(__name__)

MAX_ROWS = 256
MAX_BYTES = 16 * 1024 * 1024
IDLE_WAIT_S = 1.0


class OutboxRelay:
    def __init__(
        self, dsn: str, schema: str, broker: KafkaBroker, on_published: Callable[[int], None] | None = None
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.broker = broker
        self.on_published = on_published
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.is_leader = False

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until stopped; reconnects after database failures."""
        while not self._stopping.is_set():
            try:
                await self._run_connected()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.exception("outbox relay for %s lost its connection; retrying", self.schema)
                self.is_leader = False
                await self._sleep(1.0)

    async def _run_connected(self) -> None:
        conn = await asyncpg.connect(
            self.dsn,
            server_settings={"search_path": self.schema, "application_name": f"{self.schema}-outbox"},
        )
        try:
            lock = int.from_bytes(
                hashlib.sha256(f"outbox:{self.schema}".encode()).digest()[:8], "big", signed=True
            )
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                await self._sleep(2.0)
                if self._stopping.is_set():
                    return
            self.is_leader = True
            await conn.add_listener(OUTBOX_CHANNEL, self._notified)
            while not self._stopping.is_set():
                # Cleared before reading, so a commit that lands during the read still wakes us.
                self._wake.clear()
                if await self.relay_once(conn) == 0:
                    await self._sleep(IDLE_WAIT_S)
        finally:
            self.is_leader = False
            await conn.close()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def relay_once(self, conn: asyncpg.Connection) -> int:
        rows = await conn.fetch(
            """SELECT id, topic, key, value FROM (
                   SELECT id, topic, key, value, sum(octet_length(value)) OVER (ORDER BY id) AS upto
                   FROM outbox ORDER BY id LIMIT $1) AS o
               WHERE upto <= $2 OR id = (SELECT min(id) FROM outbox)
               ORDER BY id""",
            MAX_ROWS,
            MAX_BYTES,
        )
        if not rows:
            return 0
        pending = [
            await self.broker.publish(r["value"], topic=r["topic"], key=r["key"], no_confirm=True)
            for r in rows
        ]
        await asyncio.gather(*pending)
        await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        if self.on_published:
            self.on_published(len(rows))
        return len(rows)
