"""What every service process does around its own logic: migrate, connect, check the log, relay the outbox."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Sequence

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from shared import db
from shared.broker import assert_positions_within_log, ensure_topics, make_broker
from shared.config import ServiceSettings
from shared.outbox import OutboxRelay
from shared.topics import all_topics_with_dead_letters
from shared.web import ReadinessCheck

log = logging.getLogger(__name__)


class ServiceRuntime:
    """Pool, broker, outbox relay and metrics registry of one service; built by `create_app`, started by
    its lifespan, so nothing connects at import and tests build their own."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        name: str,
        schema: str | None,
        migrations: Sequence[str] = (),
        outbox: bool = True,
    ) -> None:
        """`schema=None`: a service without a database (no pool, migrations, outbox or positions)."""
        self.settings = settings
        self.name = name
        self.schema = schema
        self.migrations = list(migrations)
        self.broker = make_broker(settings, name)
        self.registry = CollectorRegistry()
        self.outbox_published = Counter(
            "outbox_published_total", "Outbox rows published", registry=self.registry
        )
        self.relay = (
            OutboxRelay(settings.database_url, schema, self.broker, self.outbox_published.inc)
            if outbox and schema
            else None
        )
        self._pool: asyncpg.Pool | None = None
        self._relay_task: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self.name}: the database pool is not started")
        return self._pool

    async def start(self) -> None:
        s = self.settings
        if self.schema:
            applied = await db.apply_migrations(s.database_url, self.schema, self.migrations)
            if applied:
                log.info("applied migrations", extra={"migrations": applied})
            self._pool = await db.create_pool(
                s.database_url, self.schema, min_size=s.db_pool_min, max_size=s.db_pool_max
            )
        await ensure_topics(
            s.kafka.bootstrap_servers,
            all_topics_with_dead_letters(),
            s.kafka.partitions,
            s.kafka.replication_factor,
        )
        if self._pool is not None:
            await assert_positions_within_log(self._pool, s.kafka.bootstrap_servers)
        await self.broker.start()
        tune_gc(s.gc_threshold)
        fix_mmap_threshold()
        if self.relay:
            self._relay_task = asyncio.create_task(self.relay.run(), name=f"{self.name}-outbox-relay")

    async def stop(self) -> None:
        if self.relay and self._relay_task:
            self.relay.stop()
            await asyncio.wait([self._relay_task], timeout=10)
        await self.broker.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def readiness(self) -> dict[str, ReadinessCheck]:
        async def database() -> bool:
            async with self.pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT true"))

        async def broker() -> bool:
            return bool(await self.broker.ping(timeout=2.0))

        return {"database": database, "broker": broker} if self.schema else {"broker": broker}


# glibc's mallopt parameter number for M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep glibc's mmap threshold where it starts. glibc raises it after each large block is freed, so
    the next records of hundreds of kilobytes (a batch of 5,000 recipients) come from the heap, which
    grows in steps it does not give back: the projector's peak RSS in the 1M benchmark was 390-401 MB,
    372 MB with a fixed threshold. Returns whether it applied (glibc only; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def tune_gc(threshold: int) -> None:
    """Decoding one batch event allocates tens of thousands of short-lived objects, none in reference
    cycles: with the default threshold (700) the cyclic collector ran thousands of times a second, took a
    third of the sender's CPU and grew with every live object a consumer held. Collect after `threshold`
    allocations instead, and leave the objects of start-up (framework, pools, clients) out of every pass."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold, gen1, gen2)
