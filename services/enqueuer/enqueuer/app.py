"""Enqueuer: the command API (tenants, contacts, audiences, campaigns), the consumer of sms.outcomes and
engagement.events, and the background loop (scheduler, resumes, stuck runs, expiring reservations)."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from enqueuer import routes_campaigns, routes_contacts, routes_tenants, settlement
from enqueuer.domain import Refused
from enqueuer.loops import BackgroundLoop, LoopSettings
from enqueuer.settings import EnqueuerSettings
from enqueuer.web import Deps
from shared.broker import BatchConsumer, Delivery
from shared.db import Conn
from shared.service import ServiceRuntime
from shared.topics import ENGAGEMENT_EVENTS, SMS_OUTCOMES
from shared.web import OrjsonResponse, error_body, install_common

SCHEMA = "enqueuer"
MIGRATIONS = ("shared", "enqueuer")


def create_app(settings: EnqueuerSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="enqueuer", schema=SCHEMA, migrations=MIGRATIONS)
    deps = Deps(settings, lambda: rt.pool)

    async def apply(conn: Conn, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await settlement.apply(conn, d.envelope, d.event)

    BatchConsumer(rt.broker, lambda: rt.pool, "enqueuer", apply).subscribe(
        settings, SMS_OUTCOMES, ENGAGEMENT_EVENTS
    )
    loop = BackgroundLoop(
        lambda: rt.pool, deps.plan, LoopSettings(settings.loop_interval_s, settings.stuck_after), deps.clock
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        task = asyncio.create_task(loop.run(), name="enqueuer-loop")
        try:
            yield
        finally:
            loop.stop()
            await asyncio.wait([task], timeout=10)
            await rt.stop()

    app = FastAPI(
        title="SMS campaign enqueuer", version="1", lifespan=lifespan, default_response_class=OrjsonResponse
    )
    install_common(app, registry=rt.registry, readiness=rt.readiness())
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["X-Api-Key", "Authorization", "Content-Type", "Idempotency-Key"],
            max_age=600,
        )

    @app.exception_handler(Refused)
    async def on_refused(request: Request, exc: Refused) -> Response:
        return OrjsonResponse(error_body(request, exc.code, exc.message, **exc.extra), status_code=exc.status)

    app.include_router(routes_tenants.router(deps))
    app.include_router(routes_contacts.router(deps))
    app.include_router(routes_campaigns.router(deps))
    app.state.loop = loop
    return app
