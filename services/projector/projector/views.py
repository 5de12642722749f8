"""Response shapes of the read API: the seed's field names (camelCase), one meaning per count."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from projector.domain import progress_percent, stats


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def campaign_view(row: asyncpg.Record) -> dict[str, Any]:
    s = stats(dict(row))
    return {
        "id": str(row["id"]),
        "tenantId": str(row["tenant_id"]),
        "name": row["name"],
        "messageText": row["message_text"],
        "messageType": row["message_type"],
        "channel": row["channel"],
        "senderId": row["sender_id"],
        "status": row["status"],
        "runToken": row["run_token"],
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
        "createdAt": _iso(row["created_at"]),
        "scheduledAt": _iso(row["scheduled_at"]),
        "startedAt": _iso(row["started_at"]),
        "finishedAt": _iso(row["finished_at"]),
        "updatedAt": _iso(row["updated_at"]),
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
