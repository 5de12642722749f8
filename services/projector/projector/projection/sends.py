"""Batches and send results: a batch's members while it is open, claims and outcomes in log order, and
the recipients' send results, inserted first and decided against a recorded one only where one exists."""

from __future__ import annotations

from collections import Counter

from projector.domain import MEMBER_BATCH, OPEN_BATCH, RUNS_OF_UNSENT, send_result_applies
from projector.projection.poll import Poll, campaign_of
from projector.store import sends as store_sends
from projector.store.sends import BatchOutcome, QueuedBatch
from projector.store.writes import SendRow
from shared.broker import Delivery
from shared.db import Conn
from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchResolved,
    BatchSent,
    decode,
)

Outcome = BatchClaimed | BatchSent | BatchFailed | BatchAmbiguous | BatchDeferred | BatchResolved
OUTCOMES = (BatchClaimed, BatchSent, BatchFailed, BatchAmbiguous, BatchDeferred, BatchResolved)
FINAL_STATUS = {
    BatchSent: "sent",
    BatchFailed: "failed",
    BatchAmbiguous: "ambiguous",
    BatchDeferred: "deferred",
}


async def apply_queued(conn: Conn, queued: list[Delivery]) -> None:
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
    before = await store_sends.batch_statuses(conn, list(batches))
    await store_sends.upsert_queued(conn, list(batches.values()))
    late = [b for b in batches.values() if before.get(b.batch_id) in ("failed", "ambiguous")]
    if late:
        await store_sends.fill_phones(conn, late)


async def release_outcomes(
    conn: Conn, outcomes: list[Delivery], enqueued: list[str]
) -> tuple[list[Delivery], dict[str, str]]:
    """The outcomes whose run's CampaignEnqueued has been applied, in log order, with the kinds of their
    runs: first those parked for the runs `enqueued` in this poll, then this poll's. The others are parked:
    a claim or result counted before its run would show recipients of a campaign that has none yet."""
    released = [_parked(p) for p in await store_sends.unpark_outcomes(conn, enqueued)] if enqueued else []
    pending = released + outcomes
    if not pending:
        return [], {}
    kinds = await store_sends.run_kinds(conn, list({_run_of(d) for d in pending}))
    ready = [d for d in pending if _run_of(d) in kinds]
    if len(ready) < len(pending):
        await store_sends.park_outcomes(
            conn,
            [
                (campaign_of(d), d.envelope.occurred_at, (_run_of(d), d.topic, d.partition, d.offset, d.raw))
                for d in pending
                if _run_of(d) not in kinds
            ],
        )
    return ready, kinds


def _run_of(d: Delivery) -> str:
    assert isinstance(d.event, OUTCOMES)
    return d.event.run_token


def _parked(p: store_sends.ParkedOutcome) -> Delivery:
    envelope, event = decode(p[4])
    return Delivery(p[1], p[2], p[3], None, envelope, event, p[4])


async def apply_outcomes(conn: Conn, outcomes: list[Delivery], runs: dict[str, str], poll: Poll) -> None:
    """In log order: a claim moves a queued batch to processing; its first outcome ends it. Later
    duplicates of either change nothing. `runs` holds the kind of every outcome's run."""
    if not outcomes:
        return
    ids = list(dict.fromkeys(d.event.batch_id for d in outcomes))  # type: ignore[attr-defined]
    states: dict[str, store_sends.BatchState | None] = dict.fromkeys(ids)
    states.update(await store_sends.batch_states(conn, ids))
    recorded = await _recorded_before_claims(conn, outcomes, runs)
    seen = 0  # rows of this poll already in `recorded`
    claims: list[store_sends.Claim] = []
    finishes: list[BatchOutcome] = []
    resolutions: list[store_sends.Resolution] = []
    rows: list[SendRow] = []
    for d in outcomes:
        e, cid = d.event, campaign_of(d)
        assert isinstance(e, OUTCOMES)
        before = states[e.batch_id]
        if isinstance(e, BatchResolved):
            # Results for recipients of an ambiguous batch, in steps; the recipients' own state machine
            # (ambiguous → accepted | rejected, never back) makes a repeated step change nothing.
            resolutions.append(store_sends.Resolution(e.batch_id, e.bulk_id, e.remaining))
            if before is not None and before.status == "ambiguous" and e.remaining == 0:
                states[e.batch_id] = store_sends.BatchState("resolved", before.claimed, None, None)
            rows += _resolved_rows(cid, e)
            continue
        if isinstance(e, BatchClaimed):
            if before is not None and before.status != "queued":
                continue  # claimed before, or already finished
            counted = len(e.recipient_ids)
            if runs[e.run_token] not in RUNS_OF_UNSENT:
                recorded.update((r[0], r[1]) for r in rows[seen:])
                seen = len(rows)
                counted = sum((cid, rid) not in recorded for rid in e.recipient_ids)
            claims.append(
                store_sends.Claim(e.batch_id, cid, e.run_token, len(e.recipient_ids), counted, e.claimed_at)
            )
            states[e.batch_id] = store_sends.BatchState(
                "processing",
                counted,
                before.member_ids if before else None,
                before.member_phones if before else None,
            )
            poll.campaigns[cid].processing += counted
            continue
        if before is not None and before.status not in OPEN_BATCH:
            continue  # this batch already had its outcome: a duplicate
        outcome = _outcome(cid, e)
        finishes.append(outcome)
        kept = outcome.status in MEMBER_BATCH
        states[e.batch_id] = store_sends.BatchState(
            outcome.status,
            before.claimed if before else 0,
            before.member_ids if before and kept else None,
            before.member_phones if before and kept else None,
        )
        if before is not None and before.status == "processing":
            poll.campaigns[cid].processing -= before.claimed
        rows += _send_rows(cid, e, before)
    await store_sends.claim_batches(conn, claims)
    await store_sends.finish_batches(conn, finishes)
    await store_sends.resolve_batches(conn, resolutions)
    if rows:
        await _write_send_results(conn, rows, poll)


async def _recorded_before_claims(
    conn: Conn, outcomes: list[Delivery], runs: dict[str, str]
) -> set[tuple[str, int]]:
    """Recipients claimed by a run that may hold some with a send result (a retry of failed ones): they
    stay counted under that result until the new one arrives, not as processing as well."""
    keys = [
        (campaign_of(d), rid)
        for d in outcomes
        if isinstance(d.event, BatchClaimed) and runs[d.event.run_token] not in RUNS_OF_UNSENT
        for rid in d.event.recipient_ids
    ]
    return await store_sends.recorded_recipients(conn, keys) if keys else set()


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
            True,
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


def _send_rows(campaign_id: str, e: Outcome, before: store_sends.BatchState | None) -> list[SendRow]:
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
                False,
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
        (
            campaign_id,
            rid,
            phones.get(rid, ""),
            e.batch_id,
            status,
            None,
            None,
            1,
            error,
            e.retry_count,
            at,
            False,
        )
        for rid in e.recipient_ids
    ]


async def _write_send_results(conn: Conn, rows: list[SendRow], poll: Poll) -> None:
    """Recipients without a recorded result (nearly all) are inserted in one statement; for the others
    (a retry run, a resolution) the domain decides against the recorded result, in log order."""
    first: dict[tuple[str, int], SendRow] = {}
    for row in rows:  # as if nothing were recorded: a later result in this poll wins, if it may
        key = (row[0], row[1])
        if _applies(_status_of(first[key]) if key in first else None, row):
            first[key] = row
    parked, keys = await store_sends.insert_first_results(conn, list(first.values()))
    moves: Counter[tuple[str, str, str]] = Counter(
        (r[0], r[3], r[4]) for k, r in first.items() if k not in keys
    )
    if keys:
        recorded = await store_sends.send_statuses(conn, list(keys))
        latest: dict[tuple[str, int], SendRow] = {}
        for row in rows:
            key = (row[0], row[1])
            if key in keys:
                before = _status_of(latest[key]) if key in latest else recorded[key]
                if _applies(before, row):
                    latest[key] = row
        for key, row in latest.items():
            status, batch_id = recorded[key]
            moves[(row[0], batch_id, status)] -= 1
            moves[(row[0], row[3], row[4])] += 1
        if latest:
            parked += await store_sends.write_send_results(conn, list(latest.values()))
    for (campaign_id, batch_id, status), n in moves.items():
        poll.campaigns[campaign_id].send_status(status, n)
        poll.batches[batch_id].send_status(status, n)
    # Reports that arrived before their send result were parked: count them now.
    for rec in parked:
        poll.delivery(rec["campaign_id"], rec["batch_id"], rec["status"], rec["raw_status"], rec["n"])


def _status_of(row: SendRow) -> tuple[str, str]:
    """What a row records: (send status, batch id), as `store_sends.send_statuses` reads it back."""
    return row[4], row[3]


def _applies(recorded: tuple[str, str] | None, row: SendRow) -> bool:
    """`send_result_applies` for a row against a recorded (status, batch id)."""
    return send_result_applies(
        recorded[0] if recorded else None,
        row[4],
        resolution=row[11],
        same_batch=recorded is not None and recorded[1] == row[3],
    )
