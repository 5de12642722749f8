"""The read API: campaigns (list, detail, status, recipients, CSV, live progress), totals, and the operator
endpoints (status-refresh candidates, reconciliation report, checksum). Tenant keys see their own tenant;
the operator key sees every tenant."""

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import StreamingResponse

from projector import models, reports, views
from projector.domain import campaign_status_alias
from projector.projection import CONSUMER
from projector.rebuild import LIVE
from projector.settings import ProjectorSettings
from projector.store import reads, schemas
from projector.store.reads import CampaignFilter, CandidateScope, RecipientFilter
from shared.web import ApiError

CAMPAIGN_STATUSES = frozenset(
    {"draft", "scheduled", "sending", "paused", "completed", "failed", "cancelled", "sent"}
)
RECIPIENT_STATUSES = frozenset({"queued", "processing", "sent", "failed", "ambiguous"})
CHANNELS = frozenset({"retail", "shopify"})
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": models.ApiErrorBody, "description": "bad input (code says which)"},
    401: {"model": models.ApiErrorBody, "description": "missing, unknown or revoked key"},
    404: {"model": models.ApiErrorBody, "description": "no such campaign for this key"},
}

api_key_header = APIKeyHeader(
    name="X-Api-Key", auto_error=False, description="a tenant's or the operator's key"
)
bearer = HTTPBearer(auto_error=False, description="the same key as a bearer token")


def build_router(settings: ProjectorSettings, pool: Callable[[], asyncpg.Pool]) -> APIRouter:
    router = APIRouter(responses=ERRORS)

    async def viewer(
        header_key: Annotated[str | None, Depends(api_key_header)],
        token: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str | None:
        """The caller's tenant id; None for the operator key (reads every tenant)."""
        key = (token.credentials if token else None) or header_key
        if not key:
            raise ApiError(
                401, "UNAUTHORIZED", "Send an API key as 'Authorization: Bearer <key>' or 'X-Api-Key'."
            )
        if settings.operator_api_key and key == settings.operator_api_key:
            return None
        async with pool().acquire() as conn:
            tenant = await reads.tenant_for_key(conn, hashlib.sha256(key.encode()).hexdigest())
        if tenant is None:
            raise ApiError(401, "UNAUTHORIZED", "Unknown or revoked API key.")
        return tenant

    async def operator(tenant: Annotated[str | None, Depends(viewer)]) -> None:
        if tenant is not None:
            raise ApiError(401, "UNAUTHORIZED", "This endpoint needs the operator key.")

    Viewer = Annotated[str | None, Depends(viewer)]
    Operator = Depends(operator)

    async def own_campaign(conn: Any, tenant: str | None, campaign_id: str) -> asyncpg.Record:
        row = await reads.campaign(
            conn, tenant, _uuid(campaign_id, "INVALID_ID", "The campaign id is not valid.")
        )
        if row is None:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "No such campaign.")
        return row

    @router.get("/api/campaigns", response_model=models.CampaignPage, tags=["campaigns"])
    async def list_campaigns(
        tenant: Viewer,
        status: Annotated[str | None, Query(description="one or more statuses, comma-separated")] = None,
        channel: Annotated[str | None, Query(description="retail or shopify")] = None,
        q: Annotated[
            str | None, Query(max_length=200, description="part of the campaign name, any case")
        ] = None,
        cursor: Annotated[str | None, Query(description="nextCursor of the previous page")] = None,
        page: Annotated[
            int | None, Query(ge=1, le=10_000, description="page number (instead of a cursor)")
        ] = None,
        pageSize: Annotated[int, Query(ge=1, le=200)] = 20,
        tenantId: Annotated[str | None, Query(description="operator key only: one tenant")] = None,
    ) -> dict[str, Any]:
        """Newest first. Filter by status, channel and name; page by cursor (or by number, as the seed's
        frontend does); `totals` sum the counters of every matching campaign."""
        f = CampaignFilter(
            tenant
            if tenant is not None
            else (_uuid(tenantId, "INVALID_ID", "tenantId is not valid.") if tenantId else None),
            _statuses(status),
            _channel(channel),
            q.strip() if q and q.strip() else None,
        )
        if cursor and page:
            raise ApiError(400, "CONFLICTING_PARAMETERS", "Give either cursor or page, not both.")
        after = None
        if cursor:
            try:
                created, cid = views.decode_cursor("campaigns", cursor)
                after = (datetime.fromisoformat(created), str(uuid.UUID(cid)))
            except (views.BadCursor, ValueError, TypeError):
                raise ApiError(400, "INVALID_CURSOR", "The cursor is not one this API handed out.") from None
        async with pool().acquire() as conn:
            rows = await reads.list_campaigns(
                conn, f, limit=pageSize + 1, after=after, offset=(page - 1) * pageSize if page else 0
            )
            totals, by_status = await reads.campaign_totals(conn, f)
        more = len(rows) > pageSize
        rows = rows[:pageSize]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            created = (last["created_at"] or datetime.min.replace(tzinfo=UTC)).isoformat()
            next_cursor = views.encode_cursor("campaigns", created, str(last["id"]))
        return {
            "items": [views.campaign_view(r) for r in rows],
            "total": totals["campaigns"],
            "pageSize": pageSize,
            "page": page,
            "nextCursor": next_cursor,
            "totals": views.totals_view(totals, by_status),
        }

    @router.get("/api/campaigns/{campaign_id}", response_model=models.Campaign, tags=["campaigns"])
    async def get_campaign(campaign_id: str, tenant: Viewer) -> dict[str, Any]:
        async with pool().acquire() as conn:
            return views.campaign_view(await own_campaign(conn, tenant, campaign_id))

    @router.get(
        "/api/campaigns/{campaign_id}/status", response_model=models.CampaignStatus, tags=["campaigns"]
    )
    async def campaign_status(campaign_id: str, tenant: Viewer) -> dict[str, Any]:
        """The campaign with stats total/sent/failed/processed, the recipient breakdown by status, the
        delivery-status breakdown by Mitto's raw value, and the seed frontend's `metrics`."""
        async with pool().acquire() as conn:
            row = await own_campaign(conn, tenant, campaign_id)
            breakdown = await reads.delivery_breakdown(conn, str(row["id"]))
        return views.status_view(row, breakdown)

    @router.get(
        "/api/campaigns/{campaign_id}/recipients",
        response_model=models.RecipientPage,
        tags=["campaigns"],
        responses={200: {"content": {"text/csv": {}}, "description": "JSON page, or every match as CSV"}},
    )
    async def campaign_recipients(
        request: Request,
        campaign_id: str,
        tenant: Viewer,
        status: Annotated[
            str | None, Query(description="queued, processing, sent, failed, ambiguous; comma-separated")
        ] = None,
        deliveryStatus: Annotated[
            str | None,
            Query(max_length=64, description="Mitto's raw status, any case; `none` for no report yet"),
        ] = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        format: Annotated[
            str | None, Query(pattern="^(json|csv)$", description="csv: every match, no paging")
        ] = None,
    ) -> Any:
        """Recipients in id order with their send result and delivery report. `format=csv` (or
        `Accept: text/csv`) streams every matching recipient as CSV."""
        statuses = _list(status, RECIPIENT_STATUSES, "INVALID_STATUS", "recipient status")
        delivery = (
            None if deliveryStatus is None else ("" if deliveryStatus.lower() == "none" else deliveryStatus)
        )
        after = 0
        if cursor:
            try:
                (after,) = views.decode_cursor("recipients", cursor)
                after = int(after)
            except (views.BadCursor, ValueError, TypeError):
                raise ApiError(400, "INVALID_CURSOR", "The cursor is not one this API handed out.") from None
        async with pool().acquire() as conn:
            row = await own_campaign(conn, tenant, campaign_id)
        f = RecipientFilter(str(row["id"]), statuses, delivery)
        wants_csv = format == "csv" or (format is None and "text/csv" in request.headers.get("accept", ""))
        if wants_csv:
            return StreamingResponse(
                _csv(pool, f),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="campaign-{row["id"]}-recipients.csv"'
                },
            )
        async with pool().acquire() as conn:
            rows = await reads.recipients_page(conn, f, after_id=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": [views.recipient_view(r) for r in rows],
            "nextCursor": views.encode_cursor("recipients", rows[-1]["id"]) if more and rows else None,
        }

    @router.get(
        "/api/campaigns/{campaign_id}/progress",
        tags=["campaigns"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "`progress` events: the status body"}
        },
    )
    async def campaign_progress(request: Request, campaign_id: str, tenant: Viewer) -> StreamingResponse:
        """Live progress as Server-Sent Events: a `progress` event with the status body at once and
        whenever it changes, a comment line on idle connections to keep proxies from closing them."""
        async with pool().acquire() as conn:
            row = await own_campaign(conn, tenant, campaign_id)
        return StreamingResponse(
            _progress(request, pool, str(row["id"]), settings),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/api/totals", response_model=models.TotalsPage, tags=["campaigns"])
    async def totals(tenant: Viewer) -> dict[str, Any]:
        """Totals per tenant and channel (a tenant key sees its own), and per channel."""
        async with pool().acquire() as conn:
            rows = await reads.totals_by_tenant_and_channel(conn, tenant)
        items = [
            {
                "tenantId": r["tenant_id"],
                "tenantName": r["tenant_name"],
                "channel": r["channel"],
                **views.totals_view(r),
            }
            for r in rows
        ]
        channels: dict[str, dict[str, Any]] = {}
        for r in rows:
            acc = channels.setdefault(r["channel"], dict.fromkeys(views.TOTAL_FIELDS, 0))
            for k in views.TOTAL_FIELDS:
                acc[k] += int(r[k])
        return {"items": items, "channels": {c: views.totals_view(v) for c, v in channels.items()}}

    @router.get(
        "/api/operator/refresh-candidates",
        response_model=models.RefreshCandidates,
        dependencies=[Operator],
        tags=["operator"],
    )
    async def refresh_candidates(
        olderThanMinutes: Annotated[int, Query(ge=0, le=525_600)] = 60,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        campaignId: str | None = None,
        bulkId: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Accepted messages with no final delivery status, sent before now - olderThanMinutes, oldest
        first: what a status refresh should ask Mitto about."""
        if campaignId and bulkId:
            raise ApiError(400, "CONFLICTING_PARAMETERS", "Give campaignId or bulkId, not both.")
        scope = CandidateScope(
            datetime.now(UTC) - timedelta(minutes=olderThanMinutes),
            _uuid(campaignId, "INVALID_ID", "campaignId is not valid.") if campaignId else None,
            bulkId,
        )
        async with pool().acquire() as conn:
            items = await reports.refresh_candidates(conn, scope, limit)
        return {"items": items}

    @router.get(
        "/api/operator/reconciliation",
        response_model=models.Reconciliation,
        dependencies=[Operator],
        tags=["operator"],
    )
    async def reconciliation(
        deliveryHours: Annotated[float, Query(gt=0, le=24 * 365)] = 24,
        processingMinutes: Annotated[float, Query(gt=0, le=24 * 60)] = 15,
        stuckMinutes: Annotated[float, Query(gt=0, le=24 * 60 * 7)] = 30,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """Unsettled work, with counts, ids and the command that resolves each kind: recipients stuck in
        processing, accepted messages without a final status after N hours, ambiguous batches, runs stuck
        in sending."""
        async with pool().acquire() as conn:
            return await reports.reconciliation(
                conn,
                datetime.now(UTC),
                delivery_hours=deliveryHours,
                processing_minutes=processingMinutes,
                stuck_minutes=stuckMinutes,
                limit=limit,
            )

    @router.get(
        "/api/operator/checksum", response_model=models.Checksum, dependencies=[Operator], tags=["operator"]
    )
    async def checksum() -> dict[str, Any]:
        """Order-independent checksums of the live read models and the positions they were built to
        (compare with `python -m projector checksum --against <schema>`)."""
        async with pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            sums = await schemas.checksums(conn, LIVE)
            at = await schemas.positions(conn, LIVE, CONSUMER)
        return {
            "schema": LIVE,
            "digest": schemas.digest(sums),
            "tables": {t: vars(s) for t, s in sums.items()},
            "positions": {f"{t}[{p}]": o for (t, p), o in sorted(at.items())},
        }

    return router


async def _csv(pool: Callable[[], asyncpg.Pool], f: RecipientFilter) -> AsyncIterator[str]:
    yield views.csv_lines([], header=True)
    async with pool().acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        chunk: list[dict[str, Any]] = []
        async for row in reads.stream_recipients(conn, f):
            chunk.append(views.recipient_view(row))
            if len(chunk) >= 2000:
                yield views.csv_lines(chunk, header=False)
                chunk = []
        if chunk:
            yield views.csv_lines(chunk, header=False)


async def _progress(
    request: Request, pool: Callable[[], asyncpg.Pool], campaign_id: str, settings: ProjectorSettings
) -> AsyncIterator[bytes]:
    last: dict[str, Any] | None = None
    idle = 0.0
    seq = 0
    while not await request.is_disconnected():
        async with pool().acquire() as conn:
            row = await reads.campaign(conn, None, campaign_id)
            breakdown = await reads.delivery_breakdown(conn, campaign_id) if row is not None else {}
        body = views.status_view(row, breakdown) if row is not None else None
        if body is not None and body != last:
            seq += 1
            last, idle = body, 0.0
            yield b"event: progress\nid: %d\ndata: %s\n\n" % (seq, orjson.dumps(body))
        elif idle >= settings.sse_keepalive_s:
            idle = 0.0
            yield b": keepalive\n\n"
        await asyncio.sleep(settings.sse_interval_s)
        idle += settings.sse_interval_s


def _uuid(value: str, code: str, message: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise ApiError(400, code, message) from None


def _list(raw: str | None, allowed: frozenset[str], code: str, what: str) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    values = [v.strip().lower() for v in raw.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ApiError(400, code, f"Unknown {what} {bad[0]!r}; expected one of {', '.join(sorted(allowed))}.")
    return values


def _statuses(raw: str | None) -> list[str] | None:
    values = _list(raw, CAMPAIGN_STATUSES, "INVALID_STATUS", "campaign status")
    return sorted({campaign_status_alias(v) for v in values}) if values else None


def _channel(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value not in CHANNELS:
        raise ApiError(400, "INVALID_CHANNEL", "channel must be retail or shopify.")
    return value
