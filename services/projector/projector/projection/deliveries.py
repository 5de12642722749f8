"""Delivery reports: inserted first, attributed to their recipient in the same statement, merged with a
stored report only for the messages that had one."""

from __future__ import annotations

from typing import cast

from projector.domain import DeliveryState, fold_reports
from projector.projection.poll import Poll
from projector.store import deliveries as store_deliveries
from projector.store.writes import DeliveryRow
from shared.broker import Delivery
from shared.db import Conn
from shared.events import DeliveryReported


async def apply_reports(conn: Conn, reports: list[Delivery], poll: Poll) -> None:
    """Messages without a stored report are inserted in one statement; the others are merged with the
    stored report in log order and replaced when the merge changed it. Only messages whose send result
    is known count toward a campaign; the rest are parked until it arrives."""
    if not reports:
        return
    incoming: dict[str, list[DeliveryRow]] = {}
    for d in reports:
        e = cast(DeliveryReported, d.event)  # sorted by type in `apply`
        row = (
            e.provider_message_id,
            e.status,  # a StrEnum: the mapped status string itself
            e.raw_status,
            e.error,
            e.provider_time,
            d.envelope.occurred_at,
        )
        if row[0] in incoming:
            incoming[row[0]].append(row)
        else:
            incoming[row[0]] = [row]
    first = [rows[0] if len(rows) == 1 else _delivery_row(mid, fold_reports(None, map(_state, rows)))
             for mid, rows in incoming.items()]  # fmt: skip
    counted, conflicts = await store_deliveries.insert_first_reports(conn, first)
    for rec in counted:
        poll.delivery(rec["campaign_id"], rec["batch_id"], rec["status"], rec["raw_status"], rec["n"])
    if not conflicts:
        return
    stored = await store_deliveries.stored_reports(conn, conflicts)
    changed: dict[str, tuple[DeliveryState, DeliveryState]] = {}
    for mid in conflicts:
        before = stored[mid]
        after = fold_reports(before, map(_state, incoming[mid]))
        if after is not None and after != before:
            changed[mid] = (before, after)
    if not changed:
        return
    owners = await store_deliveries.replace_reports(
        conn, [_delivery_row(mid, after) for mid, (_, after) in changed.items()]
    )
    for mid, (campaign_id, batch_id) in owners.items():
        before, after = changed[mid]
        poll.delivery(campaign_id, batch_id, before.status, before.raw_status, -1)
        poll.delivery(campaign_id, batch_id, after.status, after.raw_status, +1)


def _state(row: DeliveryRow) -> DeliveryState:
    return DeliveryState(row[1], row[2], row[3], row[4], row[5])


def _delivery_row(message_id: str, s: DeliveryState | None) -> DeliveryRow:
    assert s is not None
    return (message_id, s.status, s.raw_status, s.error, s.provider_time, s.reported_at)
