"""Sender: consumes sms.batches (sending through the ledger) and campaign.events (pause, cancel)."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Histogram

from sender import store
from sender.mitto import MittoClient
from sender.sending import BatchSender
from sender.settings import SenderSettings
from shared import db
from shared.broker import (
    FETCH_MAX_BYTES,
    PARTITION_FETCH_BYTES,
    TRANSIENT_BACKOFF_S,
    TRANSIENT_ERRORS,
    BatchConsumer,
    Delivery,
    dead_letter,
    decode_records,
    fresh_only,
    next_positions,
    raw_body,
)
from shared.db import Conn
from shared.events import (
    BatchQueued,
    CampaignCancelled,
    CampaignCompleted,
    CampaignEnqueued,
    CampaignFailed,
    CampaignPaused,
)
from shared.service import ServiceRuntime
from shared.topics import CAMPAIGN_EVENTS, SMS_BATCHES
from shared.web import OrjsonResponse, install_common

SCHEMA = "sender"
MIGRATIONS = ("shared", "sender")
BATCHES_CONSUMER = "sender"
CONTROL_CONSUMER = "sender.control"


class PrometheusSendMetrics:
    def __init__(self, rt: ServiceRuntime) -> None:
        self.batches = Counter(
            "sender_batches_total", "Batches finished, by outcome", ["status"], registry=rt.registry
        )
        self.recipients = Counter(
            "sender_recipients_total",
            "Recipients in finished batches, by outcome",
            ["status"],
            registry=rt.registry,
        )
        self.calls = Histogram(
            "sender_provider_call_seconds", "Provider bulk call latency", ["outcome"], registry=rt.registry
        )

    def batch_done(self, status: str, recipients: int) -> None:
        self.batches.labels(status).inc()
        self.recipients.labels(status).inc(recipients)

    def provider_call(self, outcome: str, seconds: float) -> None:
        self.calls.labels(outcome).observe(seconds)


async def apply_control(conn: Conn, deliveries: Sequence[Delivery]) -> None:
    """Keep the latest run and status of each campaign, for deferring batches of paused/cancelled runs."""
    for d in deliveries:
        campaign_id, e = d.envelope.campaign_id, d.event
        if campaign_id is None:
            continue
        if isinstance(e, CampaignEnqueued):
            await store.save_control(conn, campaign_id, "sending", e.run_token)
        elif isinstance(e, CampaignPaused):
            await store.save_control(conn, campaign_id, "paused", e.run_token)
        elif isinstance(e, CampaignCancelled):
            await store.save_control(conn, campaign_id, "cancelled", e.run_token)
        elif isinstance(e, CampaignCompleted | CampaignFailed):
            await store.save_control(conn, campaign_id, "finished", e.run_token)


def create_app(settings: SenderSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="sender", schema=SCHEMA, migrations=MIGRATIONS)
    mitto = MittoClient(
        settings.mitto_base_url,
        settings.mitto_api_key,
        connect_timeout=settings.mitto_connect_timeout_s,
        read_timeout=settings.mitto_read_timeout_s,
        max_connections=settings.max_concurrent_bulk_calls * 2,
    )
    sender = BatchSender(lambda: rt.pool, mitto, settings, PrometheusSendMetrics(rt))
    BatchConsumer(rt.broker, lambda: rt.pool, CONTROL_CONSUMER, apply_control).subscribe(
        settings, CAMPAIGN_EVENTS
    )

    @rt.broker.subscriber(
        SMS_BATCHES,
        group_id=BATCHES_CONSUMER,
        batch=True,
        max_records=settings.batches_per_poll,
        batch_timeout_ms=20,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
        max_poll_interval_ms=30 * 60 * 1000,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        decoder=raw_body,
    )
    async def on_batches(body: Any, msg: KafkaMessage) -> None:
        """Send the polled batches concurrently; the ledger, not the position, prevents a second send.
        The position is advanced only when every batch of the poll has an outcome recorded."""
        records = list(msg.raw_message)
        try:
            async with rt.pool.acquire() as conn:
                fresh = fresh_only(records, await store.stored_positions(conn, BATCHES_CONSUMER))
            good, bad = decode_records(fresh)
            for u in bad:
                await dead_letter(
                    rt.broker,
                    BATCHES_CONSUMER,
                    topic=u.topic,
                    partition=u.partition,
                    offset=u.offset,
                    key=u.key,
                    raw=u.raw,
                    reason=u.reason,
                )
            results = await asyncio.gather(*(send_one(d) for d in good), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            async with rt.pool.acquire() as conn, conn.transaction():
                await db.load_positions(conn, BATCHES_CONSUMER, next_positions(fresh).keys())
                await db.save_positions(conn, BATCHES_CONSUMER, next_positions(fresh))
        except TRANSIENT_ERRORS:
            await asyncio.sleep(TRANSIENT_BACKOFF_S)
            raise

    async def send_one(d: Delivery) -> None:
        if not isinstance(d.event, BatchQueued):
            await dead_letter(
                rt.broker,
                BATCHES_CONSUMER,
                topic=d.topic,
                partition=d.partition,
                offset=d.offset,
                key=d.key,
                raw=d.raw,
                reason=f"unexpected {d.envelope.type} on {SMS_BATCHES}",
            )
            return
        await sender.handle(d.envelope, d.event)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()
            await mitto.aclose()

    app = FastAPI(title="SMS sender", version="1", lifespan=lifespan, default_response_class=OrjsonResponse)
    install_common(app, registry=rt.registry, readiness=rt.readiness())
    return app
