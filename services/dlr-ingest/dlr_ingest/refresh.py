"""Status refresh (pull): ask Mitto's status lookup about messages that are sent without a final status,
and publish what it says as DeliveryReported(source="refresh").

Which messages to ask about comes from the projector's read API (`GET /api/operator/refresh-candidates`,
operator key). A lookup answered 404 is counted and publishes nothing; a lookup that fails (timeout, 5xx)
is counted as an error and left for the next refresh. Every looked-up status is published with its raw value,
final or not: an unknown one is then stored and counted instead of being polled forever unseen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry, Counter

from dlr_ingest.domain import BadReport, Candidate, RefreshSummary, Report, parse_candidates, parse_lookup
from dlr_ingest.encoding import encode_reports
from dlr_ingest.settings import DlrIngestSettings
from shared.topics import DELIVERY_REPORTS

Publish = Callable[[str, Sequence[tuple[bytes, bytes]]], Awaitable[None]]


class RefreshFailed(Exception):
    """The refresh could not run or could not record its results; `status` and `code` for the API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _LookupFailed(Exception):
    pass


class Refresher:
    """Owns two long-lived HTTP clients (projector, Mitto); `aclose()` them when done."""

    def __init__(self, settings: DlrIngestSettings, publish: Publish, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.publish = publish
        self.projector = httpx.AsyncClient(
            base_url=settings.projector_url,
            headers={"X-Api-Key": settings.operator_api_key},
            timeout=settings.projector_timeout_s,
        )
        self.mitto = httpx.AsyncClient(
            base_url=settings.mitto_base_url,
            headers={"X-Mitto-API-Key": settings.mitto_api_key},
            timeout=settings.mitto_timeout_s,
            limits=httpx.Limits(max_connections=settings.refresh_concurrency),
        )
        self.lookups = Counter(
            "dlr_refresh_lookups_total",
            "Status lookups made by refreshes, by outcome",
            ["outcome"],
            registry=registry,
        )

    async def aclose(self) -> None:
        await self.projector.aclose()
        await self.mitto.aclose()

    async def run(
        self,
        *,
        older_than_minutes: int,
        limit: int,
        campaign_id: str | None = None,
        bulk_id: str | None = None,
    ) -> RefreshSummary:
        summary = RefreshSummary()
        candidates = await self.candidates(older_than_minutes, limit, campaign_id, bulk_id)
        summary.candidates = len(candidates)
        gate = asyncio.Semaphore(self.settings.refresh_concurrency)

        async def one(c: Candidate) -> tuple[Candidate, Report | Exception | None]:
            async with gate:
                try:
                    return c, await self.lookup(c.message_id)
                except _LookupFailed as exc:
                    return c, exc

        at = datetime.now(UTC)
        records: list[tuple[bytes, bytes]] = []
        for c, found in await asyncio.gather(*(one(c) for c in candidates)):
            if isinstance(found, Exception):
                summary.error(f"{c.message_id}: {found}")
                self.lookups.labels("error").inc()
            elif found is None:
                summary.not_found += 1
                self.lookups.labels("not_found").inc()
            else:
                summary.count(found)
                self.lookups.labels(found.status.value).inc()
                records += encode_reports(
                    [found],
                    received_at=at,
                    source="refresh",
                    tenant_id=c.tenant_id,
                    campaign_id=c.campaign_id,
                )
        if records:
            try:
                await self.publish(DELIVERY_REPORTS, records)
            except Exception as exc:
                raise RefreshFailed(
                    503, "BROKER_UNAVAILABLE", f"The looked-up statuses could not be recorded: {exc!r}"
                ) from exc
        summary.published = len(records)
        return summary

    async def candidates(
        self, older_than_minutes: int, limit: int, campaign_id: str | None, bulk_id: str | None
    ) -> list[Candidate]:
        params: dict[str, str | int] = {"olderThanMinutes": older_than_minutes, "limit": limit}
        if campaign_id:
            params["campaignId"] = campaign_id
        if bulk_id:
            params["bulkId"] = bulk_id
        try:
            r = await self.projector.get("/api/operator/refresh-candidates", params=params)
        except httpx.HTTPError as exc:
            raise RefreshFailed(
                502, "PROJECTOR_UNAVAILABLE", f"The projector did not answer: {exc!r}"
            ) from exc
        if r.status_code != 200:
            raise RefreshFailed(
                502, "PROJECTOR_UNAVAILABLE", f"The projector answered {r.status_code}: {r.text[:200]}"
            )
        try:
            return parse_candidates(r.content)[:limit]
        except BadReport as exc:
            raise RefreshFailed(502, "PROJECTOR_UNAVAILABLE", exc.message) from None

    async def lookup(self, message_id: str) -> Report | None:
        """Mitto's current status of one message; None when Mitto does not know it (404)."""
        try:
            r = await self.mitto.get(f"/api/v1.1/Messages/{quote(message_id, safe='')}")
        except httpx.HTTPError as exc:
            raise _LookupFailed(repr(exc)) from exc
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise _LookupFailed(f"Mitto answered {r.status_code}")
        try:
            report = parse_lookup(r.content)
        except BadReport as exc:
            raise _LookupFailed(exc.message) from None
        if report.message_id != message_id:
            raise _LookupFailed(f"Mitto answered about {report.message_id!r}")
        return report
