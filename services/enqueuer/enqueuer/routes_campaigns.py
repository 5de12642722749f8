"""Campaign routes: drafts, schedule, enqueue, pause, resume, cancel, retry failed, preview."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from enqueuer import audiences, campaigns, domain
from enqueuer.api import CampaignIn, CampaignPatch, InlineRecipient, ScheduleIn
from enqueuer.store import campaigns as store
from enqueuer.store import runs as run_store
from enqueuer.store import tenants as tenant_store
from enqueuer.web import Deps, check_sender, check_uuid
from shared.events import MessageType
from shared.web import ApiError, OrjsonResponse


def campaign_body(c: store.Campaign, recipients: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "messageText": c.text,
        "messageType": c.message_type,
        "senderId": c.sender_id,
        "offerUrl": c.offer_url,
        "audience": c.audience,
        "scheduledAt": c.scheduled_at,
        "runToken": c.run_token,
        "resumePending": c.resume_requested_at is not None,
        "lastError": c.last_error,
        "createdAt": c.created_at,
        "updatedAt": c.updated_at,
        "startedAt": c.started_at,
        "finishedAt": c.finished_at,
    }
    if recipients is not None:
        body["recipients"] = recipients
    return body


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    Tenant = Annotated[tenant_store.Tenant, Depends(deps.tenant)]

    def inline(t: tenant_store.Tenant, recipients: list[InlineRecipient]) -> list[tuple[str, dict[str, str]]]:
        limit = deps.settings.max_inline_recipients
        if len(recipients) > limit:
            raise ApiError(413, "TOO_MANY_RECIPIENTS", f"At most {limit} inline recipients per request.")
        rows, problems = [], []
        for index, rec in enumerate(recipients):
            try:
                rows.append((domain.normalise_phone(rec.phone, t.default_region), rec.values()))
            except ValueError as exc:
                problems.append({"index": index, "phone": rec.phone, "reason": str(exc)})
        if problems:
            raise ApiError(
                400,
                "INVALID_RECIPIENTS",
                f"{len(problems)} recipient(s) have an invalid phone.",
                errors=problems[:100],
            )
        return rows

    @r.post("/api/campaigns", status_code=201)
    async def create_campaign(body: CampaignIn, t: Tenant) -> dict[str, Any]:
        check_sender(body.sender_id)
        rows = inline(t, body.recipients)
        draft = campaigns.Draft(
            name=body.name,
            text=body.text,
            sender_id=body.sender_id,
            message_type=body.message_type,
            offer_url=str(body.offer_url) if body.offer_url else None,
            audience=_spec(body.audience),
            inline=rows or None,
        )
        c = await campaigns.create(deps.pool, t, draft, body.scheduled_at, deps.clock())
        return campaign_body(c, len({p for p, _ in rows}) if rows else None)

    @r.get("/api/campaigns")
    async def list_campaigns(
        t: Tenant,
        status: str | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(alias="pageSize", ge=1, le=200)] = 20,
    ) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            total, items = await store.list_campaigns(conn, t.id, status, page_size, (page - 1) * page_size)
        return {
            "items": [campaign_body(c) for c in items],
            "total": total,
            "page": page,
            "pageSize": page_size,
        }

    async def owned(t: tenant_store.Tenant, campaign_id: str) -> store.Campaign:
        async with deps.pool.acquire() as conn:
            c = await store.load_campaign(conn, t.id, check_uuid(campaign_id))
        if c is None:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "No such campaign.")
        return c

    @r.get("/api/campaigns/{campaign_id}")
    async def get_campaign(campaign_id: str, t: Tenant) -> dict[str, Any]:
        c = await owned(t, campaign_id)
        async with deps.pool.acquire() as conn:
            counts = await run_store.recipient_counts(conn, c.id)
            runs = await run_store.campaign_runs(conn, c.id)
        return {
            **campaign_body(c),
            "recipientStates": counts,
            "runs": [
                {
                    "runToken": x["run_token"],
                    "kind": x["kind"],
                    "status": x["status"],
                    "total": x["total"],
                    "batches": x["batch_count"],
                    "settled": x["settled"],
                    "accepted": x["accepted"],
                    "failed": x["failed"],
                    "ambiguous": x["ambiguous"],
                    "deferred": x["deferred"],
                    "credits": {
                        "reserved": x["credits_reserved"],
                        "debited": x["credits_debited"],
                        "released": x["credits_released"],
                        "held": x["reservation_open"],
                    },
                    "republished": x["republished"],
                    "startedAt": x["started_at"],
                    "finishedAt": x["finished_at"],
                }
                for x in runs
            ],
        }

    @r.patch("/api/campaigns/{campaign_id}")
    async def edit_campaign(campaign_id: str, body: CampaignPatch, t: Tenant) -> dict[str, Any]:
        check_sender(body.sender_id)
        given = body.model_fields_set
        changes: dict[str, Any] = {}
        for name in ("name", "text", "sender_id"):
            if name in given:
                if name != "sender_id" and getattr(body, name) is None:
                    raise ApiError(400, "VALIDATION_ERROR", f"{name} cannot be null.")
                changes[name] = getattr(body, name)
        if "message_type" in given and body.message_type is not None:
            changes["message_type"] = body.message_type.value
        if "offer_url" in given:
            changes["offer_url"] = str(body.offer_url) if body.offer_url else None
        if "audience" in given and body.audience is not None:
            changes["audience"] = _spec(body.audience)
        if "recipients" in given and body.recipients is not None:
            changes["inline"] = inline(t, body.recipients)
        c = await campaigns.update(deps.pool, t, check_uuid(campaign_id), changes, deps.clock())
        return campaign_body(c)

    @r.post("/api/campaigns/{campaign_id}/schedule")
    async def schedule(campaign_id: str, body: ScheduleIn, t: Tenant) -> dict[str, Any]:
        c = await campaigns.schedule(deps.pool, t, check_uuid(campaign_id), body.scheduled_at, deps.clock())
        return campaign_body(c)

    @r.post("/api/campaigns/{campaign_id}/enqueue")
    async def enqueue(
        campaign_id: str,
        request: Request,
        t: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        status, body = await campaigns.enqueue(
            deps.pool,
            t,
            check_uuid(campaign_id),
            plan=deps.plan,
            idempotency_key=idempotency_key,
            at=deps.clock(),
        )
        return OrjsonResponse({**body, "requestId": request.state.request_id}, status_code=status)

    @r.post("/api/campaigns/{campaign_id}/pause")
    async def pause(campaign_id: str, t: Tenant) -> dict[str, Any]:
        return campaign_body(await campaigns.pause(deps.pool, t, check_uuid(campaign_id), deps.clock()))

    @r.post("/api/campaigns/{campaign_id}/resume")
    async def resume(campaign_id: str, t: Tenant) -> Response:
        status, body = await campaigns.resume(deps.pool, t, check_uuid(campaign_id), deps.plan, deps.clock())
        return OrjsonResponse(body, status_code=status)

    @r.post("/api/campaigns/{campaign_id}/cancel")
    async def cancel(campaign_id: str, t: Tenant) -> dict[str, Any]:
        return campaign_body(await campaigns.cancel(deps.pool, t, check_uuid(campaign_id), deps.clock()))

    @r.post("/api/campaigns/{campaign_id}/retry-failed")
    async def retry_failed(campaign_id: str, t: Tenant) -> dict[str, Any]:
        return await campaigns.retry_failed(deps.pool, t, check_uuid(campaign_id), deps.plan, deps.clock())

    @r.get("/api/campaigns/{campaign_id}/preview")
    async def preview(campaign_id: str, t: Tenant) -> dict[str, Any]:
        c = await owned(t, campaign_id)
        text = audiences.PreviewText(
            c.text,
            c.message_type == MessageType.MARKETING.value,
            c.offer_url is not None,
            deps.settings.links.base_url,
        )
        return await audiences.preview(deps.pool, t.id, c.audience, text, campaign_id=c.id)

    return r


def _spec(audience: Any) -> dict[str, Any] | None:
    if audience is None:
        return None
    try:
        spec: dict[str, Any] = audience.spec()
    except ValueError as exc:
        raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
    return spec
