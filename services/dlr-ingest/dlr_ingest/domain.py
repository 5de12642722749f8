"""Delivery-report parsing and status mapping. Pure: bytes and values in, reports or a refusal out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.events import DeliveryStatus

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


def map_status(raw: str) -> DeliveryStatus:
    value = raw.strip().lower()
    if value in DELIVERED:
        return DeliveryStatus.DELIVERED
    if value in FAILED:
        return DeliveryStatus.FAILED
    if value in SENT:
        return DeliveryStatus.SENT
    return DeliveryStatus.UNKNOWN


class BadReport(ValueError):
    """The body is not a delivery report (or a list of them); `code` is the stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Report:
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


def _report(item: Any, index: int) -> Report:
    where = f"report {index}"
    if not isinstance(item, dict):
        raise BadReport("INVALID_REPORT", f"{where}: not an object")
    message_id = item.get("messageId")
    if not isinstance(message_id, str) or not message_id.strip() or len(message_id) > 100:
        raise BadReport(
            "INVALID_REPORT", f"{where}: messageId must be a non-empty string of at most 100 characters"
        )
    raw = item.get("deliveryStatus", item.get("status"))
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
        raise BadReport("INVALID_REPORT", f"{where}: deliveryStatus (or status) must be a non-empty string")
    error = next(
        (item[k] for k in ("error", "errorcode", "description") if item.get(k) not in (None, "")), None
    )
    if error is not None and not isinstance(error, str | int):
        raise BadReport("INVALID_REPORT", f"{where}: error must be a string or a number")
    stamp = item.get("updatedAt", item.get("timestamp"))
    return Report(
        message_id.strip(),
        raw.strip(),
        map_status(raw),
        None if error is None else str(error)[:500],
        _time(stamp, where),
    )


def _time(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadReport("INVALID_REPORT", f"{where}: updatedAt must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadReport("INVALID_REPORT", f"{where}: updatedAt is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise BadReport("INVALID_REPORT", f"{where}: updatedAt needs a time zone")
    return parsed
