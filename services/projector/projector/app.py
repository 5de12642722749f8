"""Projector: builds the read models from every topic and serves the read API (wiring only)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from projector import projection
from projector.api import build_router
from projector.dashboard import mount_dashboard
from projector.projection import CONSUMER, TOPICS
from projector.rebuild import LIVE
from projector.settings import ProjectorSettings
from shared.broker import BatchConsumer, TimeAlignment
from shared.service import ServiceRuntime
from shared.topics import DELIVERY_REPORTS, SMS_OUTCOMES
from shared.web import OrjsonResponse, install_common

SCHEMA = LIVE
MIGRATIONS = ("shared", "projector")


def create_app(settings: ProjectorSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="projector", schema=SCHEMA, migrations=MIGRATIONS, outbox=False)
    hold = settings.report_hold_s
    alignment = TimeAlignment(DELIVERY_REPORTS, SMS_OUTCOMES, max_hold_s=hold) if hold > 0 else None
    BatchConsumer(
        rt.broker, lambda: rt.pool, CONSUMER, projection.apply, topic_order=TOPICS, alignment=alignment
    ).subscribe(settings, *TOPICS, max_records=settings.poll_records)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="SMS campaign read API",
        version="1",
        description="Read models built from the event log: campaigns, recipients, delivery status, totals, "
        "live progress, and operator reports. Authenticate with a tenant's API key (its own data) or the "
        "operator key (every tenant).",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    install_common(app, registry=rt.registry, readiness=rt.readiness())
    app.include_router(build_router(settings, lambda: rt.pool))
    mount_dashboard(app, settings)
    return app
