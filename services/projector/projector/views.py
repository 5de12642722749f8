"""Response shapes of the read API: the seed's field names (camelCase), one meaning per count."""

from __future__ import annotations

import base64
import csv
import io
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from projector.domain import progress_percent, stats


class BadCursor(ValueError):
    """A cursor this API did not hand out (or from another listing)."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def campaign_view(row: asyncpg.Record) -> dict[str, Any]:
    s = stats(dict(row))
    error = None
    if row["last_enqueue_error_code"]:
        error = {
            "code": row["last_enqueue_error_code"],
            "message": row["last_enqueue_error_message"],
            "at": iso(row["last_enqueue_error_at"]),
        }
    return {
        "id": str(row["id"]),
        "tenantId": str(row["tenant_id"]),
        "name": row["name"],
        "messageText": row["message_text"],
        "messageType": row["message_type"],
        "channel": row["channel"],
        "senderId": row["sender_id"],
        "offerUrl": row["offer_url"],
        "status": row["status"],
        "runToken": row["run_token"],
        "runKind": row["run_kind"],
        "total": s["total"],
        "sent": s["sent"],
        "failed": s["failed"],
        "processed": s["processed"],
        "delivered": s["delivered"],
        "progress": progress_percent(s),
        "cost": {
            "reserved": row["credits_reserved"],
            "debited": row["credits_debited"],
            "released": row["credits_released"],
        },
        "createdAt": iso(row["created_at"]),
        "scheduledAt": iso(row["scheduled_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "updatedAt": iso(row["updated_at"]),
        "lastEnqueueError": error,
        "stats": s,
    }


def status_view(row: asyncpg.Record, breakdown: dict[str, int]) -> dict[str, Any]:
    """`GET /api/campaigns/{id}/status`: the campaign with its stats, the recipient breakdown by status,
    the delivery-status breakdown by the provider's raw value, and the seed frontend's `metrics`."""
    view = campaign_view(row)
    s = view["stats"]
    return {
        "campaign": view,
        "stats": s,
        "progress": view["progress"],
        "recipients": {
            "queued": s["queued"],
            "processing": s["processing"],
            "sent": s["sent"],
            "failed": s["failed"],
            "ambiguous": s["ambiguous"],
        },
        "deliveryStatus": breakdown,
        "metrics": {
            "total": s["total"],
            "queued": s["queued"],
            "processing": s["processing"],
            "accepted": s["accepted"],
            "delivered": s["delivered"],
            "deliveryFailed": s["deliveryFailed"],
            "pendingDelivery": s["pendingDelivery"],
            "processed": s["processed"],
        },
    }


# Columns of a totals row (reads.campaign_totals, reads.totals_by_tenant_and_channel).
TOTAL_FIELDS = (
    "campaigns",
    "total",
    "accepted",
    "rejected",
    "delivered",
    "delivery_failed",
    "processing",
    "ambiguous",
    "clicked",
    "clicks",
    "unsubscribed",
    "credits_debited",
)


def totals_view(
    row: asyncpg.Record | dict[str, Any], by_status: dict[str, int] | None = None
) -> dict[str, Any]:
    """Sums over many campaigns, with the same meanings as one campaign's stats."""
    accepted, rejected = int(row["accepted"]), int(row["rejected"])
    delivered, delivery_failed = int(row["delivered"]), int(row["delivery_failed"])
    sent, failed = accepted - delivery_failed, rejected + delivery_failed
    out: dict[str, Any] = {
        "campaigns": int(row["campaigns"]),
        "total": int(row["total"]),
        "accepted": accepted,
        "sent": sent,
        "delivered": delivered,
        "failed": failed,
        "deliveryFailed": delivery_failed,
        "pendingDelivery": sent - delivered,
        "processed": sent + failed,
        "processing": int(row["processing"]),
        "ambiguous": int(row["ambiguous"]),
        "clicked": int(row["clicked"]),
        "clicks": int(row["clicks"]),
        "unsubscribed": int(row["unsubscribed"]),
        "creditsDebited": int(row["credits_debited"]),
    }
    if by_status is not None:
        out["byStatus"] = by_status
    return out


def recipient_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "phone": row["phone"],
        "status": row["status"],
        "batchId": row["batch_id"],
        "providerMessageId": row["message_id"],
        "bulkId": row["bulk_id"],
        "deliveryStatus": row["delivery_status"],
        "sentAt": iso(row["sent_at"]),
        "deliveredAt": iso(row["delivered_at"]),
        "failedAt": iso(row["failed_at"]),
        "error": row["error"],
        "retryCount": row["retry_count"],
        "parts": row["parts"],
    }


CSV_COLUMNS = (
    "id",
    "phone",
    "status",
    "batchId",
    "providerMessageId",
    "bulkId",
    "deliveryStatus",
    "sentAt",
    "deliveredAt",
    "failedAt",
    "error",
    "retryCount",
    "parts",
)


def csv_lines(rows: list[dict[str, Any]], *, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(["" if r[c] is None else r[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def encode_cursor(kind: str, *values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *values])).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise BadCursor(cursor) from None
    if not isinstance(values, list) or not values or values[0] != kind:
        raise BadCursor(cursor)
    return values[1:]
