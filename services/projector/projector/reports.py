"""Operator reports: which accepted messages a status refresh should ask Mitto about, and the
reconciliation report (unsettled work by kind, with counts, ids and the command that resolves each)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from projector.domain import RESOLUTIONS
from projector.store import reads
from projector.store.reads import CandidateScope
from shared.db import Conn


async def refresh_candidates(conn: Conn, scope: CandidateScope, limit: int) -> list[dict[str, Any]]:
    """Accepted messages without a final report, oldest first: pending batches are walked oldest first
    (their counters say which have any), taking their unreported messages until `limit`."""
    items: list[dict[str, Any]] = []
    for batch in await reads.pending_batches(conn, scope):
        rows = await reads.unreported_messages(conn, batch, scope.cutoff, limit - len(items))
        items += [
            {
                "messageId": r["message_id"],
                "campaignId": batch["campaign_id"],
                "tenantId": batch["tenant_id"],
                "sentAt": r["sent_at"].isoformat(),
            }
            for r in rows
        ]
        if len(items) >= limit:
            break
    return items


async def reconciliation(
    conn: Conn,
    now: datetime,
    *,
    delivery_hours: float,
    processing_minutes: float,
    stuck_minutes: float,
    limit: int,
) -> dict[str, Any]:
    """`now` comes from the caller (the clock stays at the edge)."""
    processing, processing_rows = await reads.stuck_processing(
        conn, now - timedelta(minutes=processing_minutes), limit
    )
    unsettled, unsettled_rows = await reads.unsettled_delivery(
        conn, now - timedelta(hours=delivery_hours), limit
    )
    ambiguous, ambiguous_rows = await reads.ambiguous_batches(conn, limit)
    runs = await reads.stuck_runs(conn, now - timedelta(minutes=stuck_minutes), limit)
    waiting, waiting_rows = await reads.waiting_for_run(conn, now - timedelta(minutes=stuck_minutes), limit)
    return {
        "generatedAt": now.isoformat(),
        "stuckProcessing": _section(
            "stuckProcessing", processing["batches"], processing["recipients"], processing_rows
        ),
        "sentWithoutFinalStatus": _section(
            "sentWithoutFinalStatus", unsettled["messages"], unsettled["messages"], unsettled_rows
        ),
        "ambiguousBatches": _section(
            "ambiguousBatches", ambiguous["batches"], ambiguous["recipients"], ambiguous_rows
        ),
        "stuckRuns": _section("stuckRuns", len(runs), 0, runs),
        "outcomesWaitingForRun": _section("outcomesWaitingForRun", waiting["runs"], 0, waiting_rows),
    }


def _section(kind: str, count: int, recipients: int, rows: list[Any]) -> dict[str, Any]:
    r = RESOLUTIONS[kind]
    items = [{_camel(k): _plain(v) for k, v in dict(row).items()} for row in rows]
    return {
        "count": int(count),
        "recipients": int(recipients),
        "items": items,
        "command": r.command,
        "why": r.why,
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
