"""Projector: builds the read models from every topic and serves the read API."""

import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from projector import projection, store
from projector.settings import ProjectorSettings
from projector.views import status_view
from shared.broker import BatchConsumer
from shared.service import ServiceRuntime
from shared.topics import CAMPAIGN_EVENTS, DELIVERY_REPORTS, SMS_BATCHES, SMS_OUTCOMES, TENANT_EVENTS
from shared.web import ApiError, OrjsonResponse, install_common

SCHEMA = "projector"
MIGRATIONS = ("shared", "projector")
CONSUMER = "projector"
TOPICS = (TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES, SMS_OUTCOMES, DELIVERY_REPORTS)


def create_app(settings: ProjectorSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="projector", schema=SCHEMA, migrations=MIGRATIONS, outbox=False)
    BatchConsumer(rt.broker, lambda: rt.pool, CONSUMER, projection.apply).subscribe(settings, *TOPICS)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="SMS campaign read API", version="1", lifespan=lifespan, default_response_class=OrjsonResponse
    )
    install_common(app, registry=rt.registry, readiness=rt.readiness())

    async def viewer(request: Request) -> str | None:
        """The caller's tenant id; None for the operator key (reads every tenant)."""
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not key:
            raise ApiError(
                401, "UNAUTHORIZED", "Send an API key as 'Authorization: Bearer <key>' or 'X-Api-Key'."
            )
        if settings.operator_api_key and key == settings.operator_api_key:
            return None
        async with rt.pool.acquire() as conn:
            tenant = await store.tenant_for_key(conn, hashlib.sha256(key.encode()).hexdigest())
        if tenant is None:
            raise ApiError(401, "UNAUTHORIZED", "Unknown or revoked API key.")
        return tenant

    Viewer = Annotated[str | None, Depends(viewer)]

    @app.get("/api/campaigns/{campaign_id}/status")
    async def campaign_status(campaign_id: str, tenant: Viewer) -> dict[str, Any]:
        try:
            uuid.UUID(campaign_id)
        except ValueError:
            raise ApiError(400, "INVALID_ID", "The campaign id is not valid.") from None
        async with rt.pool.acquire() as conn:
            row = await store.campaign(conn, tenant, campaign_id)
            if row is None:
                raise ApiError(404, "RESOURCE_NOT_FOUND", "No such campaign.")
            breakdown = await store.delivery_breakdown(conn, campaign_id)
        return status_view(row, breakdown)

    return app
