"""dlr-ingest's decisions. Pure: bytes and values in, reports, refusals or rows out; no I/O, no clock.

Delivery reports (webhook bodies and status lookups), the status mapping, refresh candidates, and the rows
the link pages need, taken from the events that name recipients, campaigns and tenants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson

from dlr_ingest.intake import BatchLinks
from shared.events import (
    BatchQueued,
    CampaignCreated,
    CampaignUpdated,
    DeliveryStatus,
    EnvelopeHead,
    Event,
    TenantRegistered,
)

# Matched case-insensitively; anything else is kept raw, treated as non-final and counted.
DELIVERED = frozenset({"delivered", "delivrd", "completed", "ok", "success"})
FAILED = frozenset(
    {
        "failure",
        "failed",
        "undelivered",
        "undeliv",
        "expired",
        "rejected",
        "rejectd",
        "error",
        "deleted",
        "unknown_error",
        "blocked",
    }
)
SENT = frozenset({"sent", "queued", "accepted", "acceptd", "submitted", "enroute", "pending", "buffered"})


_STATUS_OF: dict[str, DeliveryStatus] = {
    **dict.fromkeys(SENT, DeliveryStatus.SENT),
    **dict.fromkeys(FAILED, DeliveryStatus.FAILED),
    **dict.fromkeys(DELIVERED, DeliveryStatus.DELIVERED),
}


def map_status(raw: str) -> DeliveryStatus:
    return _STATUS_OF.get(raw.strip().lower(), DeliveryStatus.UNKNOWN)


class BadReport(ValueError):
    """The body is not a delivery report (or a list of them); `code` is the stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Report(NamedTuple):
    """One delivery report. A named tuple rather than a dataclass: the webhook makes one per report, and a
    tuple costs a third of a frozen dataclass to build."""

    message_id: str
    raw_status: str
    status: DeliveryStatus
    error: str | None
    provider_time: datetime | None


def parse_reports(body: bytes, *, max_reports: int) -> list[Report]:
    """One report object or an array of them, with either field spelling of the provider."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReport("MALFORMED_JSON", f"the body is not JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BadReport("EMPTY_BATCH", "the array holds no report")
    if len(items) > max_reports:
        raise BadReport("TOO_MANY_REPORTS", f"at most {max_reports} reports per request")
    return [_report(item, index) for index, item in enumerate(items)]


def _invalid(index: int, problem: str) -> BadReport:
    return BadReport("INVALID_REPORT", f"report {index}: {problem}")


def _report(item: Any, index: int) -> Report:
    if type(item) is not dict:
        raise _invalid(index, "not an object")
    message_id = item.get("messageId")
    if type(message_id) is not str or not (message_id := message_id.strip()) or len(message_id) > 100:
        raise _invalid(index, "messageId must be a non-empty string of at most 100 characters")
    raw = item.get("deliveryStatus")
    if raw is None:
        raw = item.get("status")
    if type(raw) is not str or not (raw := raw.strip()) or len(raw) > 64:
        raise _invalid(
            index, "deliveryStatus (or status) must be a non-empty string of at most 64 characters"
        )
    error = item.get("error")
    if error is None or error == "":
        error = item.get("errorcode")
        if error is None or error == "":
            error = item.get("description")
            if error == "":
                error = None
    if error is not None:
        if type(error) is int:
            error = str(error)
        elif type(error) is not str:
            raise _invalid(index, "error must be a string or an integer code")
        elif len(error) > 500:
            error = error[:500]
    stamp = item.get("updatedAt")
    if stamp is None:
        stamp = item.get("timestamp")
    return Report(
        message_id,
        raw,
        _STATUS_OF.get(raw.lower(), DeliveryStatus.UNKNOWN),
        error,
        None if stamp is None or stamp == "" else _time(stamp, index),
    )


def _time(value: Any, index: int) -> datetime:
    if type(value) is not str:
        raise _invalid(index, "updatedAt must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(index, "updatedAt is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise _invalid(index, "updatedAt needs a time zone")
    return parsed


def parse_lookup(body: bytes) -> Report:
    """Mitto's status lookup (`GET /api/v1.1/Messages/{id}`) as a report; same fields and mapping as a
    callback. An error text is kept only for a failed (or unknown) status: on a delivered message Mitto's
    `description` describes, it does not report an error."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReport("MALFORMED_JSON", f"the lookup answer is not JSON: {exc}") from None
    report = _report(data, 0)
    if report.status in (DeliveryStatus.DELIVERED, DeliveryStatus.SENT):
        return Report(report.message_id, report.raw_status, report.status, None, report.provider_time)
    return report


# --- status refresh ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A message the projector knows as sent without a final delivery status."""

    message_id: str
    campaign_id: str | None
    tenant_id: str | None


def parse_candidates(body: bytes) -> list[Candidate]:
    """The projector's `{"items": [{"messageId", "campaignId", "tenantId", "sentAt"}]}`; items without a
    usable message id are skipped (they cannot be looked up), a malformed body is refused."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReport("MALFORMED_JSON", f"the candidates answer is not JSON: {exc}") from None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise BadReport("INVALID_CANDIDATES", "the candidates answer has no items array")
    out: list[Candidate] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        mid = item.get("messageId")
        if not isinstance(mid, str) or not mid.strip() or mid in seen:
            continue
        seen.add(mid)
        out.append(
            Candidate(mid.strip(), _str_or_none(item.get("campaignId")), _str_or_none(item.get("tenantId")))
        )
    return out


def _str_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value) else None


@dataclass
class RefreshSummary:
    """What one refresh did. `published` = looked-up statuses written to delivery.reports."""

    candidates: int = 0
    looked_up: int = 0
    published: int = 0
    final: int = 0
    non_final: int = 0
    unknown_status: int = 0
    not_found: int = 0
    errors: int = 0
    by_status: dict[str, int] | None = None
    first_error: str | None = None

    def count(self, report: Report) -> None:
        self.looked_up += 1
        if report.status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
            self.final += 1
        else:
            self.non_final += 1
        if report.status == DeliveryStatus.UNKNOWN:
            self.unknown_status += 1
        statuses = self.by_status if self.by_status is not None else {}
        statuses[report.raw_status] = statuses.get(report.raw_status, 0) + 1
        self.by_status = statuses

    def error(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message

    def as_json(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "lookedUp": self.looked_up,
            "published": self.published,
            "final": self.final,
            "nonFinal": self.non_final,
            "unknownStatus": self.unknown_status,
            "notFound": self.not_found,
            "errors": self.errors,
            "byStatus": self.by_status or {},
            "firstError": self.first_error,
        }


# --- links -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantRow:
    id: str
    name: str


@dataclass(frozen=True)
class CampaignRow:
    id: str
    tenant_id: str | None
    name: str | None
    offer_url: str | None


@dataclass(frozen=True)
class LinkBatchRow:
    """One batch's recipients as the link pages find them: the phone of `ids[i]` is `phones[i]`, and
    [min_id, max_id] is what the index searches (ids of one batch need not be in order)."""

    batch_id: str
    campaign_id: str
    tenant_id: str | None
    min_id: int
    max_id: int
    ids: list[int]
    phones: list[str]


@dataclass(frozen=True)
class LinkTarget:
    """What a link token leads to: the recipient, its campaign's offer URL and the shop's name."""

    recipient_id: int
    campaign_id: str
    tenant_id: str | None
    phone: str
    offer_url: str | None
    shop_name: str | None


@dataclass
class Catalogue:
    """Rows to upsert from one batch of consumed events; later events of the batch win."""

    tenants: dict[str, TenantRow]
    campaigns: dict[str, CampaignRow]
    batch_offers: dict[str, CampaignRow]  # a campaign's offer URL as a batch carried it: fills a gap only
    batches: dict[str, LinkBatchRow]


def catalogue(events: Sequence[tuple[EnvelopeHead, Event]]) -> Catalogue:
    """A BatchQueued arrives as BatchLinks (read for the catalogue only) or, when it had to be upcast, in
    full; either becomes one row for all its recipients."""
    out = Catalogue({}, {}, {}, {})
    for envelope, event in events:
        if isinstance(event, TenantRegistered) and envelope.tenant_id:
            out.tenants[envelope.tenant_id] = TenantRow(envelope.tenant_id, event.name)
        elif isinstance(event, CampaignCreated | CampaignUpdated) and envelope.campaign_id:
            out.campaigns[envelope.campaign_id] = CampaignRow(
                envelope.campaign_id, envelope.tenant_id, event.name, event.offer_url
            )
        elif isinstance(event, BatchLinks | BatchQueued):
            campaign = envelope.campaign_id or event.batch_id.split(":", 1)[0]
            out.batch_offers[campaign] = CampaignRow(campaign, envelope.tenant_id, None, event.offer_url)
            if isinstance(event, BatchLinks):
                ids = [r["id"] for r in event.recipients]
                phones = [r["phone"] for r in event.recipients]
            else:
                ids = [r.id for r in event.recipients]
                phones = [r.phone for r in event.recipients]
            if ids:
                out.batches[event.batch_id] = LinkBatchRow(
                    event.batch_id, campaign, envelope.tenant_id, min(ids), max(ids), ids, phones
                )
    return out


def redirect_target(url: str | None) -> str | None:
    """The offer URL if it is safe to redirect a phone's browser to: absolute http(s) with a host."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url.strip()
