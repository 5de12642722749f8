"""Sender: consumes sms.batches (sending through the ledger) and campaign.events (pause, cancel); operator
endpoints for ambiguous batches; health and metrics."""

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict

from sender import store
from sender.limits import TrafficLimits
from sender.locks import BatchLocks
from sender.mitto import MittoClient
from sender.resolution import AmbiguousDetail, ResolutionRefused, Resolved, Resolver
from sender.sending import BatchSender, Unsendable
from sender.settings import SenderSettings
from shared import db
from shared.broker import (
    FETCH_MAX_BYTES,
    PARTITION_FETCH_BYTES,
    TRANSIENT_BACKOFF_S,
    BatchConsumer,
    Delivery,
    dead_letter,
    fresh_only,
    next_positions,
    raw_body,
)
from shared.db import Conn
from shared.events import (
    CampaignCancelled,
    CampaignCompleted,
    CampaignEnqueued,
    CampaignFailed,
    CampaignPaused,
    DecodeError,
)
from shared.service import ServiceRuntime
from shared.topics import CAMPAIGN_EVENTS, SMS_BATCHES
from shared.web import ApiError, OrjsonResponse, install_common

SCHEMA = "sender"
MIGRATIONS = ("shared", "sender")
BATCHES_CONSUMER = "sender"
CONTROL_CONSUMER = "sender.control"

log = logging.getLogger(__name__)


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
        self.retries = Counter(
            "sender_provider_retries_total", "Calls tried again, by reason", ["reason"], registry=rt.registry
        )
        self.ambiguous = Gauge(
            "sender_ambiguous_recipients",
            "Recipients of ambiguous batches awaiting resolution",
            registry=rt.registry,
        )

    def batch_done(self, status: str, recipients: int) -> None:
        self.batches.labels(status).inc()
        self.recipients.labels(status).inc(recipients)

    def provider_call(self, outcome: str, seconds: float) -> None:
        self.calls.labels(outcome).observe(seconds)

    def retried(self, reason: str) -> None:
        self.retries.labels(reason).inc()


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


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["fail", "resend"]


def batch_view(b: store.AmbiguousBatch) -> dict[str, Any]:
    return {
        "batchId": b.batch_id,
        "campaignId": b.campaign_id,
        "tenantId": b.tenant_id,
        "runToken": b.run_token,
        "status": b.status,
        "reason": b.reason,
        "since": b.since,
        "recipients": b.remaining,
        "resolutions": b.resolutions,
        "messageIdsToLookUp": b.unlooked_ids,
    }


def detail_view(d: AmbiguousDetail) -> dict[str, Any]:
    return {**batch_view(d.batch), "members": [{"id": r.id, "phone": r.phone} for r in d.recipients]}


def resolved_view(r: Resolved) -> dict[str, Any]:
    return {
        "batchId": r.batch_id,
        "action": r.action,
        "accepted": r.accepted,
        "failed": r.failed,
        "stillAmbiguous": r.still_ambiguous,
        "note": r.note,
    }


def create_app(settings: SenderSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="sender", schema=SCHEMA, migrations=MIGRATIONS)
    mitto = MittoClient(
        settings.mitto_base_url,
        settings.mitto_api_key,
        connect_timeout=settings.mitto_connect_timeout_s,
        read_timeout=settings.mitto_read_timeout_s,
        max_connections=settings.max_concurrent_bulk_calls * 2 + settings.lookup_concurrency,
        keepalive_expiry=settings.mitto_keepalive_expiry_s,
    )
    metrics = PrometheusSendMetrics(rt)
    locks = BatchLocks(settings.database_url)
    limits = TrafficLimits(
        settings.mitto_messages_per_second, settings.mitto_burst_seconds, settings.max_concurrent_bulk_calls
    )
    sender = BatchSender(lambda: rt.pool, mitto, settings, metrics, locks, limits)
    resolver = Resolver(lambda: rt.pool, sender, locks, mitto, settings.lookup_concurrency)
    BatchConsumer(rt.broker, lambda: rt.pool, CONTROL_CONSUMER, apply_control).subscribe(
        settings, CAMPAIGN_EVENTS
    )

    async def to_dead_letters(record: Any, reason: str) -> None:
        await dead_letter(
            rt.broker,
            BATCHES_CONSUMER,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            raw=record.value or b"",
            reason=reason,
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
        try:
            async with rt.pool.acquire() as conn:
                fresh = fresh_only(
                    list(msg.raw_message), await store.stored_positions(conn, BATCHES_CONSUMER)
                )
            results = await asyncio.gather(*(handle_one(r) for r in fresh), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            async with rt.pool.acquire() as conn, conn.transaction():
                await db.load_positions(conn, BATCHES_CONSUMER, next_positions(fresh).keys())
                await db.save_positions(conn, BATCHES_CONSUMER, next_positions(fresh))
        except Exception:
            # Transient (database, broker) or not: the poll is rewound and redelivered; the ledger makes the
            # redelivery safe, and a batch interrupted after its claim comes back as ambiguous.
            log.exception("sms.batches poll failed; it will be redelivered")
            await asyncio.sleep(TRANSIENT_BACKOFF_S)
            raise

    async def handle_one(record: Any) -> None:
        try:
            await sender.handle_record(record.value or b"")
        except (DecodeError, Unsendable) as exc:
            await to_dead_letters(record, str(exc))

    async def resolve_in_background() -> None:
        while True:
            try:
                await resolver.sweep()
                await resolver.look_up_known_ids()
                async with rt.pool.acquire() as conn:
                    metrics.ambiguous.set((await store.count_ambiguous(conn))[1])
            except Exception:
                log.exception("resolving ambiguous batches failed; trying again later")
            await asyncio.sleep(settings.resolver_interval_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        background = asyncio.create_task(resolve_in_background(), name="sender-resolver")
        try:
            yield
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            await rt.stop()
            await locks.close()
            await mitto.aclose()

    app = FastAPI(title="SMS sender", version="1", lifespan=lifespan, default_response_class=OrjsonResponse)
    install_common(app, registry=rt.registry, readiness=rt.readiness())

    def operator(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not settings.operator_api_key:
            raise ApiError(401, "UNAUTHORIZED", "Operator endpoints are off: OPERATOR_API_KEY is not set.")
        if not hmac.compare_digest(key.encode(), settings.operator_api_key.encode()):
            raise ApiError(401, "UNAUTHORIZED", "An operator API key is required.")

    def refused(exc: ResolutionRefused) -> ApiError:
        return ApiError(exc.status, exc.code, exc.message)

    @app.get("/api/operator/ambiguous-batches", dependencies=[Depends(operator)])
    async def list_ambiguous(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: str | None = None
    ) -> dict[str, Any]:
        items = await resolver.list_batches(limit, after)
        async with rt.pool.acquire() as conn:
            batches, recipients = await store.count_ambiguous(conn)
        return {
            "items": [batch_view(b) for b in items],
            "totalBatches": batches,
            "totalRecipients": recipients,
            "next": items[-1].batch_id if len(items) == limit else None,
        }

    @app.get("/api/operator/ambiguous-batches/{batch_id}", dependencies=[Depends(operator)])
    async def show_ambiguous(batch_id: str) -> dict[str, Any]:
        try:
            return detail_view(await resolver.detail(batch_id))
        except ResolutionRefused as exc:
            raise refused(exc) from exc

    @app.post("/api/operator/ambiguous-batches/{batch_id}/resolve", dependencies=[Depends(operator)])
    async def resolve_ambiguous(batch_id: str, body: ResolveIn) -> dict[str, Any]:
        try:
            return resolved_view(await resolver.resolve(batch_id, body.action))
        except ResolutionRefused as exc:
            raise refused(exc) from exc

    return app
