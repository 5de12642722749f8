"""Who is working on a batch right now: a PostgreSQL advisory lock per batch, taken before the claim and
released after the outcome is recorded, on one connection this process keeps for its locks.

A claimed batch without an outcome is ambiguous only when its claimant is gone. During a rebalance two
replicas can get the same record; the second one finds the lock taken and waits instead of declaring a
batch ambiguous that is still in its provider call. The lock dies with the claimant's connection, that is
with a crashed process. (Should this connection drop while a call is in flight, the batch may be declared
ambiguous by someone else; the answer that then arrives resolves it, see `sending.py`.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

log = logging.getLogger(__name__)


def lock_key(batch_id: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"sender:batch:{batch_id}".encode()).digest()[:8], "big", signed=True
    )


class BatchLocks:
    def __init__(self, dsn: str, *, wait_step_s: float = 0.2) -> None:
        self.dsn = dsn
        self.wait_step_s = wait_step_s
        self._conn: asyncpg.Connection | None = None
        self._io = asyncio.Lock()  # one query at a time on the lock connection
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}  # advisory locks are re-entrant per session

    async def close(self) -> None:
        async with self._io:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close()
            self._conn = None

    @asynccontextmanager
    async def hold(self, batch_id: str) -> AsyncIterator[None]:
        """Hold the batch's lock, waiting for whoever holds it now (in this process or another)."""
        async with self._local_lock(batch_id):
            key = lock_key(batch_id)
            # The holder may be another process: there is no event to wait on, only the lock to poll.
            while (conn := await self._try(key)) is None:  # noqa: ASYNC110
                await asyncio.sleep(self.wait_step_s)
            try:
                yield
            finally:
                await self._release(conn, key)

    @asynccontextmanager
    async def try_hold(self, batch_id: str) -> AsyncIterator[bool]:
        """Hold the batch's lock if it is free; yields False (holding nothing) when someone has it."""
        if batch_id in self._local:
            yield False
            return
        async with self._local_lock(batch_id):
            key = lock_key(batch_id)
            conn = await self._try(key)
            try:
                yield conn is not None
            finally:
                if conn is not None:
                    await self._release(conn, key)

    @asynccontextmanager
    async def _local_lock(self, batch_id: str) -> AsyncIterator[None]:
        lock, users = self._local.get(batch_id, (asyncio.Lock(), 0))
        self._local[batch_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._local[batch_id]
            if users == 1:
                del self._local[batch_id]
            else:
                self._local[batch_id] = (lock, users - 1)

    async def _try(self, key: int) -> asyncpg.Connection | None:
        """The connection now holding the lock, or None when another session has it."""
        async with self._io:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self.dsn, server_settings={"application_name": "sender-locks"}
                )
            taken = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
            return self._conn if taken else None

    async def _release(self, conn: asyncpg.Connection, key: int) -> None:
        async with self._io:
            if conn is not self._conn or conn.is_closed():
                return  # the session that held it is gone, and the lock with it
            try:
                await conn.fetchval("SELECT pg_advisory_unlock($1)", key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("could not release a batch lock; closing the lock connection", exc_info=True)
                await conn.close()
