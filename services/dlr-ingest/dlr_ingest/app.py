"""dlr-ingest: the provider's delivery-report webhook. A report is answered 2xx only once the broker
has it (acks=all); when the broker cannot take it the answer is 503 so that the provider retries."""

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from prometheus_client import Counter, Histogram
from starlette.responses import Response

from dlr_ingest.domain import BadReport, Report, parse_reports
from dlr_ingest.settings import DlrIngestSettings
from shared.events import DeliveryReported, encode, envelope_for
from shared.service import ServiceRuntime
from shared.topics import DELIVERY_REPORTS
from shared.web import ApiError, OrjsonResponse, install_common

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5


def create_app(settings: DlrIngestSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="dlr-ingest", schema=None)
    received = Counter(
        "dlr_reports_received_total",
        "Reports accepted and published, by mapped status",
        ["status"],
        registry=rt.registry,
    )
    rejected = Counter(
        "dlr_requests_rejected_total", "Requests refused, by reason", ["reason"], registry=rt.registry
    )
    publish_seconds = Histogram(
        "dlr_publish_seconds", "Time for the broker to acknowledge a request's reports", registry=rt.registry
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="SMS delivery-report ingest",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_common(app, registry=rt.registry, readiness=rt.readiness())

    def refuse(status: int, code: str, message: str, **extra: object) -> ApiError:
        rejected.labels(code).inc()
        return ApiError(status, code, message, **extra)

    def authenticate(request: Request) -> None:
        if not settings.webhook_secrets:
            return
        given = request.headers.get(settings.webhook_secret_header, "").encode()
        # Compare against every accepted secret (no early exit), each in constant time.
        matches = [hmac.compare_digest(given, s.encode()) for s in settings.webhook_secrets]
        if not any(matches):
            raise refuse(401, "UNAUTHORIZED", "Missing or wrong webhook secret.")

    async def publish(reports: list[Report]) -> None:
        at = datetime.now(UTC)
        pending = []
        for r in reports:
            event = DeliveryReported(
                provider_message_id=r.message_id,
                raw_status=r.raw_status,
                status=r.status,
                error=r.error,
                provider_time=r.provider_time,
                received_at=at,
                source="webhook",
            )
            raw = encode(envelope_for(event, occurred_at=at, tenant_id=None))
            pending.append(
                await rt.broker.publish(
                    raw, topic=DELIVERY_REPORTS, key=r.message_id.encode(), no_confirm=True
                )
            )
        await asyncio.gather(*pending)

    @app.post("/webhooks/mitto/dlr", status_code=202)
    async def delivery_reports(request: Request) -> Response:
        authenticate(request)
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise refuse(413, "PAYLOAD_TOO_LARGE", f"The body exceeds {settings.max_body_bytes} bytes.")
        try:
            reports = parse_reports(body, max_reports=settings.max_reports_per_request)
        except BadReport as exc:
            raise refuse(400, exc.code, exc.message) from None
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(publish(reports), timeout=settings.publish_timeout_s)
        except Exception as exc:
            log.warning("could not publish %d delivery reports: %r", len(reports), exc)
            raise refuse(
                503,
                "BROKER_UNAVAILABLE",
                "The reports could not be recorded; retry later.",
                retry_after=RETRY_AFTER_S,
            ) from None
        publish_seconds.observe(asyncio.get_running_loop().time() - started)
        for r in reports:
            received.labels(r.status.value).inc()
        return OrjsonResponse({"accepted": len(reports)}, status_code=202)

    return app
