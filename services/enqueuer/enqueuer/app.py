"""Enqueuer: the command API (tenants, campaigns, enqueue) and the sms.outcomes consumer."""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from starlette.responses import Response

from enqueuer import commands, domain, store
from enqueuer.api import CampaignIn, TenantIn
from enqueuer.domain import Refused
from enqueuer.settings import EnqueuerSettings
from shared.broker import BatchConsumer, Delivery
from shared.db import Conn
from shared.service import ServiceRuntime
from shared.topics import SMS_OUTCOMES
from shared.web import ApiError, OrjsonResponse, install_common

SCHEMA = "enqueuer"
MIGRATIONS = ("shared", "enqueuer")


def now() -> datetime:
    return datetime.now(UTC)


def create_app(settings: EnqueuerSettings) -> FastAPI:
    rt = ServiceRuntime(settings, name="enqueuer", schema=SCHEMA, migrations=MIGRATIONS)

    async def apply_outcomes(conn: Conn, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await commands.apply_outcome(conn, d.envelope, d.event)

    BatchConsumer(rt.broker, lambda: rt.pool, "enqueuer", apply_outcomes).subscribe(settings, SMS_OUTCOMES)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(
        title="SMS campaign enqueuer", version="1", lifespan=lifespan, default_response_class=OrjsonResponse
    )
    install_common(app, registry=rt.registry, readiness=rt.readiness())

    async def tenant(request: Request) -> store.Tenant:
        key = _api_key(request)
        async with rt.pool.acquire() as conn:
            found = await store.tenant_for_key(conn, commands.hash_key(key))
        if found is None:
            raise ApiError(401, "UNAUTHORIZED", "Unknown or revoked API key.")
        return found

    def operator(request: Request) -> None:
        if not settings.operator_api_key or _api_key(request) != settings.operator_api_key:
            raise ApiError(401, "UNAUTHORIZED", "An operator API key is required.")

    Tenant = Annotated[store.Tenant, Depends(tenant)]

    @app.post("/api/tenants", status_code=201, dependencies=[Depends(operator)])
    async def register_tenant(body: TenantIn) -> dict[str, Any]:
        if body.sender_id:
            _check_sender(body.sender_id)
        created = await commands.register_tenant(
            rt.pool,
            name=body.name,
            channel=body.channel,
            default_region=body.default_region,
            sender_id=body.sender_id,
            at=now(),
        )
        t = created.tenant
        return {
            "tenant": {
                "id": t.id,
                "name": t.name,
                "channel": t.channel,
                "defaultRegion": t.default_region,
                "senderId": t.sender_id,
                "subscriptionStatus": t.subscription_status,
            },
            "apiKey": created.api_key,
        }

    @app.post("/api/campaigns", status_code=201)
    async def create_campaign(body: CampaignIn, t: Tenant) -> dict[str, Any]:
        if body.sender_id:
            _check_sender(body.sender_id)
        if len(body.recipients) > settings.max_inline_recipients:
            raise ApiError(
                413,
                "TOO_MANY_RECIPIENTS",
                f"At most {settings.max_inline_recipients} inline recipients per request.",
            )
        audience, problems = [], []
        for index, r in enumerate(body.recipients):
            try:
                audience.append((domain.normalise_phone(r.phone, t.default_region), r.values()))
            except ValueError as exc:
                problems.append({"index": index, "phone": r.phone, "reason": str(exc)})
        if problems:
            raise ApiError(
                400,
                "INVALID_RECIPIENTS",
                f"{len(problems)} recipient(s) have an invalid phone.",
                errors=problems[:100],
            )
        c = await commands.create_campaign(
            rt.pool,
            t,
            name=body.name,
            text=body.text,
            sender_id=body.sender_id,
            message_type=body.message_type,
            audience=audience,
            at=now(),
        )
        return {
            "id": c.id,
            "name": c.name,
            "status": c.status,
            "messageText": c.text,
            "messageType": c.message_type,
            "senderId": c.sender_id,
            "recipients": len({a[0] for a in audience}),
        }

    @app.post("/api/campaigns/{campaign_id}/enqueue")
    async def enqueue(
        campaign_id: str,
        request: Request,
        t: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        _check_uuid(campaign_id)
        try:
            status, body = await commands.enqueue(
                rt.pool,
                t,
                campaign_id,
                batch_size=settings.batch_size,
                idempotency_key=idempotency_key,
                at=now(),
            )
        except Refused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return OrjsonResponse({**body, "requestId": request.state.request_id}, status_code=status)

    return app


def _api_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key:
        raise ApiError(
            401, "UNAUTHORIZED", "Send an API key as 'Authorization: Bearer <key>' or 'X-Api-Key'."
        )
    return key


def _check_uuid(value: str) -> None:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        raise ApiError(400, "INVALID_ID", "The campaign id is not valid.") from None


def _check_sender(sender_id: str) -> None:
    try:
        domain.check_sender_id(sender_id)
    except ValueError as exc:
        raise ApiError(400, "INVALID_SENDER_ID", str(exc)) from None
