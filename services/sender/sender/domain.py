"""The sender's decisions: plain data in, a decision out. No I/O, no clock, no random numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sender.mitto import Accepted, Ambiguous, Found, NotSent, SendOutcome
from sender.outcomes import ResultRow, result_row
from sender.texts import BatchTexts
from shared.events import BatchQueued, BatchRecipient, MessageType
from shared.links import LinkSettings

Go = Literal["send", "paused", "cancelled", "superseded"]

DUPLICATE_ERROR = "already handed to the provider"
OPERATOR_FAIL_ERROR = "declared failed by an operator after an ambiguous send: it may have been delivered"


@dataclass(frozen=True)
class Control:
    status: str
    run_token: str | None


def go_or_defer(control: Control | None, run_token: str) -> Go:
    """Send unless this run was paused, or the campaign cancelled, before the call.

    A different run token in the control row says nothing about which run is newer: the control row
    follows campaign.events, which is not ordered with sms.batches, so a new run's (retry failed, resume)
    first batches often arrive before its CampaignEnqueued. Deferring them would drop the run. An older
    run's batch arriving late is harmless: the per-(campaign, phone) claim never hands a phone over twice.
    """
    if control is None:
        return "send"
    if control.status == "cancelled":
        return "cancelled"
    if control.status == "paused" and control.run_token == run_token:
        return "paused"
    return "send"


@dataclass(frozen=True)
class Prepared:
    """The provider request items of a batch, in the order the results will come back."""

    messages: list[dict[str, Any]]
    parts: list[int]


def prepare(
    batch: BatchQueued,
    recipients: Sequence[BatchRecipient],
    *,
    campaign_id: str,
    traffic_account: str,
    default_sender: str,
    links: LinkSettings,
) -> Prepared:
    """`reference` is `{campaign}:{recipient}`: the provider keeps it, so a status lookup of a message id
    leads back to its recipient."""
    sender = batch.sender_id or default_sender
    texts = BatchTexts(
        batch.template,
        marketing=batch.message_type == MessageType.MARKETING,
        with_offer=bool(batch.offer_url),
        links=links,
    )
    messages: list[dict[str, Any]] = []
    counts: list[int] = []
    reference = f"{campaign_id}:"
    for r in recipients:
        text, n = texts.text_and_parts(r.id, r.values)
        messages.append(
            {
                "trafficAccountId": traffic_account,
                "destination": r.phone,
                "sms": {"text": text, "sender": sender},
                "reference": reference + str(r.id),
            }
        )
        counts.append(n)
    return Prepared(messages, counts)


def only_claimed(
    prepared: Prepared, recipients: Sequence[BatchRecipient], duplicates: Mapping[int, str]
) -> Prepared:
    """Drop the items of recipients whose phone another batch already handed over."""
    if not duplicates:
        return prepared
    keep = [i for i, r in enumerate(recipients) if r.id not in duplicates]
    return Prepared([prepared.messages[i] for i in keep], [prepared.parts[i] for i in keep])


def backoff_seconds(
    attempt: int, *, base: float, cap: float, retry_after: float | None, jitter: float
) -> float:
    """Full-jitter exponential backoff; never shorter than the provider's Retry-After. `jitter` in [0, 1)."""
    delay = min(cap, base * 2.0 ** (attempt - 1)) * jitter
    return max(delay, retry_after or 0.0)


def should_retry(outcome: SendOutcome, attempt: int, max_attempts: int) -> bool:
    """Only what provably never reached the provider is tried again."""
    return isinstance(outcome, NotSent) and outcome.retry and attempt < max_attempts


@dataclass(frozen=True)
class Verdict:
    """What one provider answer means for the recipients it was about."""

    status: Literal["sent", "failed", "ambiguous"]
    results: list[ResultRow]  # per recipient, by request position (sent only)
    rejected: list[str]  # phones the provider refused: a later run may claim them again
    error: str | None = None  # failed: the provider's error; ambiguous: why it is not known
    known_ids: tuple[str, ...] = ()  # ambiguous: message ids in an answer that could not be matched
    bulk_id: str | None = None


def judge(claimed: Sequence[BatchRecipient], part_counts: Sequence[int], outcome: SendOutcome) -> Verdict:
    """Results by array position; an item without a message id failed with the provider's reason."""
    if isinstance(outcome, Accepted):
        # The literal is `outcomes.result_row`, inlined: this runs for every recipient of every batch.
        results = [
            {"id": r.id, "phone": r.phone, "message_id": mid, "parts": p, "error": err, "duplicate_of": None}
            for r, p, mid, err in zip(claimed, part_counts, outcome.message_ids, outcome.errors, strict=True)
        ]
        rejected = [r.phone for r, mid in zip(claimed, outcome.message_ids, strict=True) if mid is None]
        return Verdict("sent", results, rejected, bulk_id=outcome.bulk_id)
    if isinstance(outcome, NotSent):
        return Verdict("failed", [], [r.phone for r in claimed], error=outcome.error)
    assert isinstance(outcome, Ambiguous)
    return Verdict("ambiguous", [], [], error=outcome.reason, known_ids=outcome.message_ids)


def duplicate_rows(recipients: Sequence[BatchRecipient], duplicates: Mapping[int, str]) -> list[ResultRow]:
    """The suppressed recipients: their phone was handed over by another batch (`duplicate_of`)."""
    return [
        result_row(r.id, r.phone, error=DUPLICATE_ERROR, duplicate_of=duplicates[r.id])
        for r in recipients
        if r.id in duplicates
    ]


@dataclass(frozen=True)
class Resolution:
    """Final results for some ambiguous recipients, and what the ledger records for them."""

    results: list[ResultRow]
    accepted: list[tuple[str, str]]  # (phone, message id)
    rejected: list[str]  # provably not sent: a later run may claim them again
    abandoned: list[str]  # declared failed though possibly delivered: never claimed again


def resolve_with_answer(verdict: Verdict, claimed: Sequence[BatchRecipient], held: set[str]) -> Resolution:
    """A final answer for recipients that were ambiguous (only those whose phone the batch still holds):
    accepted ones get their message id, the others failed and may be claimed again by a later run."""
    if verdict.status == "sent":
        rows = [row for row in verdict.results if row["phone"] in held]
        accepted = [(row["phone"], row["message_id"]) for row in rows if row["message_id"]]
        return Resolution(rows, accepted, [row["phone"] for row in rows if not row["message_id"]], [])
    assert verdict.status == "failed"
    reason = verdict.error or "provider refused"
    members = [r for r in claimed if r.phone in held]
    return Resolution(
        [result_row(r.id, r.phone, error=reason) for r in members], [], [r.phone for r in members], []
    )


def resolve_by_operator_fail(remaining: Sequence[BatchRecipient]) -> Resolution:
    """The operator gives up on them: failed, and never handed over again (they may have been delivered)."""
    return Resolution(
        [result_row(r.id, r.phone, error=OPERATOR_FAIL_ERROR) for r in remaining],
        [],
        [],
        [r.phone for r in remaining],
    )


def resolve_by_lookups(
    campaign_id: str, remaining: Sequence[BatchRecipient], found: Sequence[Found]
) -> Resolution:
    """Message ids the provider knows, tied to recipients by the `reference` sent with them."""
    by_reference = {f"{campaign_id}:{r.id}": r for r in remaining}
    results: list[ResultRow] = []
    accepted: list[tuple[str, str]] = []
    for f in found:
        r = by_reference.pop(f.reference, None) if f.reference else None
        if r is None:
            continue
        results.append(result_row(r.id, r.phone, message_id=f.message_id, parts=f.parts))
        accepted.append((r.phone, f.message_id))
    return Resolution(results, accepted, [], [])
