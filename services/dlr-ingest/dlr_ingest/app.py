"""dlr-ingest: the public edge for the provider and recipients. Wiring only: the delivery-report webhook
(webhook.py), the recipients' links (links.py), the operator's status refresh (refresh.py), and the consumer
that keeps the link catalogue (tenants, campaigns, recipients' batches) from the log (catalogue.py).

The webhook publishes through a producer of its own and never waits on PostgreSQL; readiness therefore
follows the broker only, so a database outage takes the link pages down (503) but not the webhook.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from dlr_ingest.api import RefreshIn
from dlr_ingest.catalogue import catalogue_consumer
from dlr_ingest.links import LinkPages
from dlr_ingest.publisher import publisher_for
from dlr_ingest.refresh import Refresher, RefreshFailed
from dlr_ingest.settings import DlrIngestSettings
from dlr_ingest.webhook import Webhook
from shared.logs import configure_logging
from shared.service import ServiceRuntime
from shared.topics import CAMPAIGN_EVENTS, SMS_BATCHES, TENANT_EVENTS
from shared.web import ApiError, OrjsonResponse, install_common

SCHEMA = "dlr_ingest"
MIGRATIONS = ("shared", "dlr_ingest")
CONSUMER = "dlr-ingest"


def create_app(settings: DlrIngestSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="dlr-ingest", schema=SCHEMA, migrations=MIGRATIONS)
    publisher = publisher_for(settings)
    webhook = Webhook(settings, publisher, rt.registry)
    links = LinkPages(lambda: rt.pool, settings.links.secret, rt.registry)
    refresher = Refresher(settings, publisher.publish, rt.registry)

    catalogue_consumer(rt.broker, lambda: rt.pool, CONSUMER).subscribe(
        settings, TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            await publisher.start()
            yield
        finally:
            await refresher.aclose()
            await publisher.stop()
            await rt.stop()

    app = FastAPI(
        title="SMS delivery-report ingest and recipient links",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    readiness = {"broker": rt.readiness()["broker"]}
    install_common(app, registry=rt.registry, readiness=readiness)

    @app.post("/webhooks/mitto/dlr", status_code=202)
    async def delivery_reports(request: Request) -> Response:
        return await webhook.handle(request)

    @app.get("/l/{token}", include_in_schema=False)
    async def offer_link(token: str) -> Response:
        return await links.offer(token)

    @app.get("/u/{token}", include_in_schema=False)
    async def unsubscribe_link(token: str) -> Response:
        return await links.unsubscribe(token)

    def operator(request: Request) -> None:
        if not settings.operator_api_key or _api_key(request) != settings.operator_api_key:
            raise ApiError(401, "UNAUTHORIZED", "An operator API key is required.")

    @app.post("/api/operator/refresh", dependencies=[Depends(operator)])
    async def refresh(body: RefreshIn) -> dict[str, Any]:
        if body.campaign_id and body.bulk_id:
            raise ApiError(400, "CONFLICTING_SCOPE", "Give campaignId or bulkId, not both.")
        if body.limit > settings.refresh_max_limit:
            raise ApiError(400, "LIMIT_TOO_HIGH", f"limit is at most {settings.refresh_max_limit}.")
        try:
            summary = await refresher.run(
                older_than_minutes=body.older_than_minutes,
                limit=body.limit,
                campaign_id=body.campaign_id,
                bulk_id=body.bulk_id,
            )
        except RefreshFailed as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return summary.as_json()

    return app


def _api_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")


def app_from_environment() -> FastAPI:
    """The app of one worker process when several share the port (`WORKERS` > 1)."""
    settings = DlrIngestSettings()
    configure_logging("dlr-ingest", settings.log_level, settings.log_json)
    return create_app(settings)
