"""The consumer that keeps the link catalogue from tenant.events, campaign.events and sms.batches: a
`shared.broker.BatchConsumer` whose sms.batches records are read by `intake.read_batch`, which skips what
the catalogue does not keep."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg
from faststream.kafka import KafkaBroker

from dlr_ingest import domain, store
from dlr_ingest.intake import read_batch
from shared.broker import BatchConsumer, Delivery
from shared.db import Conn
from shared.events import EnvelopeHead, Event, decode
from shared.topics import SMS_BATCHES


async def keep_catalogue(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    await store.save_catalogue(conn, domain.catalogue([(d.envelope, d.event) for d in deliveries]))


def read_record(topic: str, raw: bytes) -> tuple[EnvelopeHead, Event]:
    return read_batch(raw) if topic == SMS_BATCHES else decode(raw)


def catalogue_consumer(
    broker: KafkaBroker, pool_ref: Callable[[], asyncpg.Pool], consumer: str
) -> BatchConsumer:
    return BatchConsumer(broker, pool_ref, consumer, keep_catalogue, read=read_record)
