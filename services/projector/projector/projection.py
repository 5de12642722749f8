"""Applies one consumed batch of events to the read models: set-based SQL per event kind, counters moved
by transitions. Any interleaving of the topics converges to the same rows (see domain.py for the rules).

Within a poll the kinds are applied in a fixed order (facts, batches, outcomes, reports, engagement);
events of one kind keep their log order. Kinds from different topics commute, so the order is free."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from projector.domain import (
    MEMBER_BATCH,
    OPEN_BATCH,
    BatchDelta,
    CampaignDelta,
    DeliveryState,
    fold_reports,
    send_result_applies,
)
from projector.store import writes
from projector.store.writes import (
    BatchOutcome,
    CampaignFields,
    DeliveryRow,
    QueuedBatch,
    SendRow,
    StatusChange,
)
from shared.broker import Delivery
from shared.db import Conn
from shared.events import (
    ApiKeyIssued,
    ApiKeyRevoked,
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchResolved,
    BatchSent,
    CampaignCancelled,
    CampaignCompleted,
    CampaignCreated,
    CampaignEnqueued,
    CampaignEnqueueRefused,
    CampaignFailed,
    CampaignPaused,
    CampaignScheduled,
    CampaignUpdated,
    ContactUnsubscribed,
    CreditsDebited,
    CreditsReleased,
    CreditsReserved,
    CreditsToppedUp,
    DeliveryReported,
    Event,
    LinkClicked,
    SubscriptionChanged,
    TenantRegistered,
)
from shared.topics import (
    CAMPAIGN_EVENTS,
    DELIVERY_REPORTS,
    ENGAGEMENT_EVENTS,
    SMS_BATCHES,
    SMS_OUTCOMES,
    TENANT_EVENTS,
)

CONSUMER = "projector"
TOPICS = (TENANT_EVENTS, CAMPAIGN_EVENTS, SMS_BATCHES, SMS_OUTCOMES, DELIVERY_REPORTS, ENGAGEMENT_EVENTS)

# Applied once per event id: increments and last-writer fields would move again on a duplicate.
ONCE = (
    TenantRegistered,
    ApiKeyIssued,
    ApiKeyRevoked,
    SubscriptionChanged,
    CreditsToppedUp,
    CampaignCreated,
    CampaignUpdated,
    CampaignScheduled,
    CampaignEnqueued,
    CampaignPaused,
    CampaignCancelled,
    CampaignCompleted,
    CampaignFailed,
    CampaignEnqueueRefused,
    CreditsReserved,
    CreditsDebited,
    CreditsReleased,
    LinkClicked,
    ContactUnsubscribed,
)
Outcome = BatchClaimed | BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred | BatchResolved
OUTCOMES = (BatchClaimed, BatchSent, BatchFailed, BatchAmbiguous, BatchDeferred, BatchResolved)
FINAL_STATUS = {
    BatchSent: "sent",
    BatchFailed: "failed",
    BatchAmbiguous: "ambiguous",
    BatchDeferred: "deferred",
}
# Event type → how it is applied; types not listed (other services' events) are ignored.
KINDS: dict[type[Event], str] = {
    **dict.fromkeys(ONCE, "fact"),
    BatchQueued: "queued",
    **dict.fromkeys(OUTCOMES, "outcome"),
    DeliveryReported: "report",
}
CREDITS = {
    CreditsReserved: "credits_reserved",
    CreditsDebited: "credits_debited",
    CreditsReleased: "credits_released",
}


@dataclass
class Poll:
    """What one consumed batch changes beyond its own rows: counters, keyed by campaign and by batch."""

    campaigns: defaultdict[str, CampaignDelta] = field(default_factory=lambda: defaultdict(CampaignDelta))
    batches: defaultdict[str, BatchDelta] = field(default_factory=lambda: defaultdict(BatchDelta))
    tenants: dict[str, str] = field(default_factory=dict)  # campaign → tenant, from envelopes

    def delivery(self, campaign_id: str, batch_id: str, status: str | None, raw: str | None, n: int) -> None:
        self.campaigns[campaign_id].delivery_change(status, raw, n)
        self.batches[batch_id].delivery_change(status, n)


async def apply(conn: Conn, deliveries: Sequence[Delivery], *, consumer: str = CONSUMER) -> None:
    """Apply `deliveries` in the caller's transaction. Records at or past the positions stored in the
    schema being written are applied; earlier ones are skipped (see `writes.lock_positions`)."""
    await writes.lock_apply(conn)
    positions = await writes.lock_positions(conn, consumer, {(d.topic, d.partition) for d in deliveries})
    fresh = [d for d in deliveries if d.offset >= positions.get((d.topic, d.partition), 0)]
    if not fresh:
        return
    poll = Poll()
    kinds: dict[str, list[Delivery]] = {"fact": [], "queued": [], "outcome": [], "report": []}
    for d in fresh:
        kind = KINDS.get(type(d.event))
        if kind is not None:
            kinds[kind].append(d)
        if d.envelope.campaign_id and d.envelope.tenant_id:
            poll.tenants[campaign_of(d)] = d.envelope.tenant_id
    engagement = await _apply_facts(conn, kinds["fact"])
    await _apply_queued(conn, kinds["queued"])
    await _apply_outcomes(conn, kinds["outcome"], poll)
    await _apply_reports(conn, kinds["report"], poll)
    await _apply_engagement(conn, engagement, poll)
    await _save(conn, poll)


def campaign_of(d: Delivery) -> str:
    """The envelope's campaign id in PostgreSQL's text form: counters are keyed by it, and rows read back
    from SQL must land on the same key. An id that is not a UUID fails the event (dead letter)."""
    return str(uuid.UUID(d.envelope.campaign_id)) if d.envelope.campaign_id else ""


# --- tenant and campaign facts -----------------------------------------------------------------------


async def _apply_facts(conn: Conn, facts: list[Delivery]) -> list[Delivery]:
    """Apply each new once-only fact in log order; returns the engagement events (applied set-based)."""
    new = await writes.claim_events(conn, [d.envelope.event_id for d in facts])
    engagement: list[Delivery] = []
    for d in facts:
        if d.envelope.event_id not in new:
            continue
        new.discard(d.envelope.event_id)  # the same event twice in one poll: the first one counts
        if isinstance(d.event, LinkClicked | ContactUnsubscribed):
            engagement.append(d)
        else:
            await _apply_fact(conn, d)
    return engagement


async def _apply_fact(conn: Conn, d: Delivery) -> None:
    e, env = d.event, d.envelope
    tid, cid, at = env.tenant_id, campaign_of(d), env.occurred_at
    if isinstance(e, TenantRegistered):
        await writes.upsert_tenant(conn, tid or "", e.name, e.channel.value, e.default_region, e.sender_id)
    elif isinstance(e, ApiKeyIssued):
        await writes.issue_key(conn, e.key_hash, e.key_id, tid or "")
    elif isinstance(e, ApiKeyRevoked):
        await writes.revoke_key(conn, e.key_id)
    elif isinstance(e, SubscriptionChanged):
        await writes.set_subscription(conn, tid or "", e.status)
    elif isinstance(e, CreditsToppedUp):
        await writes.add_tenant_credits(conn, tid or "", e.credits)
    elif isinstance(e, CampaignCreated):
        fields = CampaignFields(e.name, e.text, e.message_type.value, e.sender_id, e.offer_url, e.created_at)
        await writes.create_campaign(conn, cid, tid, e.channel.value, fields)
    elif isinstance(e, CampaignUpdated):
        fields = CampaignFields(e.name, e.text, e.message_type.value, e.sender_id, e.offer_url, e.updated_at)
        await writes.update_campaign(conn, cid, fields)
    elif isinstance(e, CampaignEnqueueRefused):
        await writes.set_enqueue_error(conn, cid, tid, e.code, e.message, e.refused_at)
    elif isinstance(e, CreditsReserved | CreditsDebited | CreditsReleased):
        await writes.add_campaign_credits(conn, cid, tid, CREDITS[type(e)], e.credits)
    else:
        change = _status_change(e, at)
        if change is not None:
            await writes.set_campaign_status(conn, cid, tid, change)


def _status_change(e: Event, at: datetime) -> StatusChange | None:
    if isinstance(e, CampaignScheduled):
        return StatusChange("scheduled", at, scheduled_at=e.scheduled_at)
    if isinstance(e, CampaignEnqueued):
        return StatusChange(
            "sending",
            at,
            run_token=e.run_token,
            run_kind=e.run_kind.value,
            run_total=e.total,
            batch_count=e.batch_count,
            total=e.campaign_total,
            started_at=e.started_at,
        )
    if isinstance(e, CampaignPaused):
        return StatusChange("paused", at)
    if isinstance(e, CampaignCancelled):
        return StatusChange("cancelled", at, finished_at=e.cancelled_at)
    if isinstance(e, CampaignCompleted):
        return StatusChange("completed", at, finished_at=e.finished_at)
    if isinstance(e, CampaignFailed):
        return StatusChange("failed", at, finished_at=e.finished_at)
    return None  # CampaignResumed: the resumed run arrives as its own CampaignEnqueued


# --- sms.batches -------------------------------------------------------------------------------------


async def _apply_queued(conn: Conn, queued: list[Delivery]) -> None:
    if not queued:
        return
    batches: dict[str, QueuedBatch] = {}
    for d in queued:
        e = d.event
        assert isinstance(e, BatchQueued)
        batches[e.batch_id] = QueuedBatch(
            e.batch_id,
            campaign_of(d),
            e.run_token,
            e.batch_no,
            [r.id for r in e.recipients],
            [r.phone for r in e.recipients],
        )
    before = await writes.batch_statuses(conn, list(batches))
    await writes.upsert_queued(conn, list(batches.values()))
    late = [b for b in batches.values() if before.get(b.batch_id) in ("failed", "ambiguous")]
    if late:
        await writes.fill_phones(conn, late)


# --- sms.outcomes ------------------------------------------------------------------------------------


async def _apply_outcomes(conn: Conn, outcomes: list[Delivery], poll: Poll) -> None:
    """In log order: a claim moves a queued batch to processing; its first outcome ends it. Later
    duplicates of either change nothing."""
    if not outcomes:
        return
    ids = list(dict.fromkeys(d.event.batch_id for d in outcomes))  # type: ignore[attr-defined]
    states: dict[str, writes.BatchState | None] = dict.fromkeys(ids)
    states.update(await writes.batch_states(conn, ids))
    claims: list[writes.Claim] = []
    finishes: list[BatchOutcome] = []
    resolutions: list[writes.Resolution] = []
    rows: list[SendRow] = []
    for d in outcomes:
        e, cid = d.event, campaign_of(d)
        assert isinstance(e, OUTCOMES)
        before = states[e.batch_id]
        if isinstance(e, BatchResolved):
            # Results for recipients of an ambiguous batch, in steps; the recipients' own state machine
            # (ambiguous → accepted | rejected, never back) makes a repeated step change nothing.
            resolutions.append(writes.Resolution(e.batch_id, e.bulk_id, e.remaining))
            if before is not None and before.status == "ambiguous" and e.remaining == 0:
                states[e.batch_id] = writes.BatchState("resolved", before.claimed, None, None)
            rows += _resolved_rows(cid, e)
            continue
        if isinstance(e, BatchClaimed):
            if before is not None and before.status != "queued":
                continue  # claimed before, or already finished
            claims.append(writes.Claim(e.batch_id, cid, e.run_token, len(e.recipient_ids), e.claimed_at))
            states[e.batch_id] = writes.BatchState(
                "processing",
                len(e.recipient_ids),
                before.member_ids if before else None,
                before.member_phones if before else None,
            )
            poll.campaigns[cid].processing += len(e.recipient_ids)
            continue
        if before is not None and before.status not in OPEN_BATCH:
            continue  # this batch already had its outcome: a duplicate
        outcome = _outcome(cid, e)
        finishes.append(outcome)
        kept = outcome.status in MEMBER_BATCH
        states[e.batch_id] = writes.BatchState(
            outcome.status,
            before.claimed if before else 0,
            before.member_ids if before and kept else None,
            before.member_phones if before and kept else None,
        )
        if before is not None and before.status == "processing":
            poll.campaigns[cid].processing -= before.claimed
        rows += _send_rows(cid, e, before)
    await writes.claim_batches(conn, claims)
    await writes.finish_batches(conn, finishes)
    await writes.resolve_batches(conn, resolutions)
    if rows:
        await _write_send_results(conn, rows, poll)


def _resolved_rows(campaign_id: str, e: BatchResolved) -> list[SendRow]:
    return [
        (
            campaign_id,
            r.id,
            r.phone,
            e.batch_id,
            "accepted" if r.message_id else "rejected",
            r.message_id,
            e.bulk_id,
            r.parts,
            r.error,
            e.retry_count,
            e.resolved_at,
        )
        for r in e.results
        if r.duplicate_of is None
    ]


def _outcome(campaign_id: str, e: Outcome) -> BatchOutcome:
    status = FINAL_STATUS[type(e)]
    if isinstance(e, BatchSent):
        return BatchOutcome(
            e.batch_id, campaign_id, e.run_token, status, e.sent_at, e.bulk_id, None, e.retry_count
        )
    if isinstance(e, BatchFailed):
        return BatchOutcome(
            e.batch_id, campaign_id, e.run_token, status, e.failed_at, None, e.error, e.retry_count
        )
    if isinstance(e, BatchAmbiguous):
        return BatchOutcome(e.batch_id, campaign_id, e.run_token, status, e.at, None, e.reason, e.retry_count)
    assert isinstance(e, BatchDeferred)
    return BatchOutcome(e.batch_id, campaign_id, e.run_token, status, e.at, None, e.reason, 0)


def _send_rows(campaign_id: str, e: Outcome, before: writes.BatchState | None) -> list[SendRow]:
    """Recipient rows of one outcome; phones of failed/ambiguous batches come from the batch's members
    (or are filled in when its BatchQueued is read later)."""
    if isinstance(e, BatchSent):
        return [
            (
                campaign_id,
                r.id,
                r.phone,
                e.batch_id,
                "accepted" if r.message_id else "rejected",
                r.message_id,
                e.bulk_id,
                r.parts,
                r.error,
                e.retry_count,
                e.sent_at,
            )
            for r in e.results
            if r.duplicate_of is None
        ]
    if not isinstance(e, BatchFailed | BatchAmbiguous):
        return []
    phones: dict[int, str] = {}
    if before is not None and before.member_ids and before.member_phones:
        phones = dict(zip(before.member_ids, before.member_phones, strict=True))
    status, error, at = (
        ("rejected", e.error, e.failed_at) if isinstance(e, BatchFailed) else ("ambiguous", e.reason, e.at)
    )
    return [
        (campaign_id, rid, phones.get(rid, ""), e.batch_id, status, None, None, 1, error, e.retry_count, at)
        for rid in e.recipient_ids
    ]


async def _write_send_results(conn: Conn, rows: list[SendRow], poll: Poll) -> None:
    """Recipients without a recorded result (nearly all) are inserted in one statement; for the others
    (a retry run, a resolution) the domain decides against the recorded result, in log order."""
    first: dict[tuple[str, int], SendRow] = {}
    for row in rows:  # as if nothing were recorded: a later result in this poll wins, if it may
        key = (row[0], row[1])
        if send_result_applies(first[key][4] if key in first else None, row[4]):
            first[key] = row
    parked, keys = await writes.insert_first_results(conn, list(first.values()))
    moves: Counter[tuple[str, str, str]] = Counter(
        (r[0], r[3], r[4]) for k, r in first.items() if k not in keys
    )
    if keys:
        recorded = await writes.send_statuses(conn, list(keys))
        latest: dict[tuple[str, int], SendRow] = {}
        for row in rows:
            key = (row[0], row[1])
            if key in keys:
                before = latest[key][4] if key in latest else recorded[key][0]
                if send_result_applies(before, row[4]):
                    latest[key] = row
        for key, row in latest.items():
            status, batch_id = recorded[key]
            moves[(row[0], batch_id, status)] -= 1
            moves[(row[0], row[3], row[4])] += 1
        if latest:
            parked += await writes.write_send_results(conn, list(latest.values()))
    for (campaign_id, batch_id, status), n in moves.items():
        poll.campaigns[campaign_id].send_status(status, n)
        poll.batches[batch_id].send_status(status, n)
    # Reports that arrived before their send result were parked: count them now.
    for rec in parked:
        poll.delivery(rec["campaign_id"], rec["batch_id"], rec["status"], rec["raw_status"], rec["n"])


# --- delivery.reports --------------------------------------------------------------------------------


async def _apply_reports(conn: Conn, reports: list[Delivery], poll: Poll) -> None:
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
    counted, conflicts = await writes.insert_first_reports(conn, first)
    for rec in counted:
        poll.delivery(rec["campaign_id"], rec["batch_id"], rec["status"], rec["raw_status"], rec["n"])
    if not conflicts:
        return
    stored = await writes.stored_reports(conn, conflicts)
    changed: dict[str, tuple[DeliveryState, DeliveryState]] = {}
    for mid in conflicts:
        before = stored[mid]
        after = fold_reports(before, map(_state, incoming[mid]))
        if after is not None and after != before:
            changed[mid] = (before, after)
    if not changed:
        return
    owners = await writes.replace_reports(
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


# --- engagement.events -------------------------------------------------------------------------------


async def _apply_engagement(conn: Conn, events: list[Delivery], poll: Poll) -> None:
    if not events:
        return
    grouped: dict[tuple[str, int, str], list[datetime]] = defaultdict(list)
    for d in events:
        e = d.event
        if isinstance(e, LinkClicked):
            grouped[(campaign_of(d), e.recipient_id, "click")].append(e.clicked_at)
        elif isinstance(e, ContactUnsubscribed):
            grouped[(campaign_of(d), e.recipient_id, "unsubscribe")].append(e.unsubscribed_at)
    rows = [(c, r, k, len(ts), min(ts), max(ts)) for (c, r, k), ts in grouped.items()]
    for rec in await writes.add_engagements(conn, rows):
        delta = poll.campaigns[rec["campaign_id"]]
        if rec["kind"] == "click":
            delta.clicks += len(grouped[(rec["campaign_id"], rec["recipient_id"], "click")])
            delta.clicked += int(rec["first"])
        else:
            delta.unsubscribed += int(rec["first"])


# --- counters ----------------------------------------------------------------------------------------


async def _save(conn: Conn, poll: Poll) -> None:
    items = [(cid, d) for cid, d in poll.campaigns.items() if not d.is_empty()]
    if items:
        unknown = [cid for cid, _ in items if cid not in poll.tenants]
        known = await writes.tenants_of(conn, unknown) if unknown else {}
        await writes.save_campaign_deltas(
            conn, [(cid, poll.tenants.get(cid) or known.get(cid), d) for cid, d in items]
        )
    batches = [(bid, d) for bid, d in poll.batches.items() if not d.is_empty()]
    if batches:
        await writes.save_batch_deltas(conn, batches)
