"""The consumer that keeps the link catalogue from tenant.events, campaign.events and sms.batches.

It is `shared.broker.BatchConsumer` (positions, slices, dead letters, isolation of a failing event) with one
change: sms.batches records are read by `intake.read_batch`, which skips what the catalogue does not keep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from faststream.kafka import KafkaBroker

from dlr_ingest import domain, store
from dlr_ingest.intake import read_batch
from shared import db
from shared.broker import BatchConsumer, Delivery, Undecodable, dead_letter, fresh_only, next_positions
from shared.db import Conn
from shared.events import DecodeError, decode
from shared.topics import SMS_BATCHES


async def keep_catalogue(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    await store.save_catalogue(conn, domain.catalogue([(d.envelope, d.event) for d in deliveries]))


def read_records(records: Sequence[Any]) -> tuple[list[Delivery], list[Undecodable]]:
    """`shared.broker.decode_records`, with sms.batches read for the catalogue only; log order is kept."""
    good: list[Delivery] = []
    bad: list[Undecodable] = []
    for r in records:
        try:
            envelope, event = read_batch(r.value) if r.topic == SMS_BATCHES else decode(r.value)
        except DecodeError as exc:
            bad.append(Undecodable(r.topic, r.partition, r.offset, r.key, r.value or b"", str(exc)))
        else:
            good.append(Delivery(r.topic, r.partition, r.offset, r.key, envelope, event, r.value))
    return good, bad


class CatalogueConsumer(BatchConsumer):
    def __init__(self, broker: KafkaBroker, pool_ref: Callable[[], asyncpg.Pool], consumer: str) -> None:
        super().__init__(broker, pool_ref, consumer, keep_catalogue)

    async def _process_slice(self, records: Sequence[Any]) -> None:
        """BatchConsumer's slice, step for step, but for `read_records` in place of `decode_records`
        (the base class decodes inline, so the whole slice is restated here)."""
        pool = self.pool_ref()
        async with pool.acquire() as conn, conn.transaction():
            positions = await db.load_positions(
                conn, self.consumer, {(r.topic, r.partition) for r in records}
            )
            fresh = fresh_only(records, positions)
            if not fresh:
                return
            good, bad = read_records(fresh)
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
