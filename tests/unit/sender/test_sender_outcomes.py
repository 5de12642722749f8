"""The sender's hand-encoded events are exactly the shared contract: decoded by `shared.events.decode`, equal
to the models, with stable event ids; and BatchQueued is read the same way on the fast path."""

from datetime import UTC, datetime

import orjson
import pytest
from sender import outcomes
from sender.intake import decode_batch
from sender.outcomes import Cause, result_row

from shared.events import (
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchRecipient,
    BatchResolved,
    BatchSent,
    CampaignPaused,
    DecodeError,
    MessageType,
    RecipientResult,
    decode,
    encode,
    envelope_for,
)

AT = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
CAUSE = Cause("tenant-1", "camp-1", "queued-event-id", "correlation-1")


def decoded(raw: bytes) -> tuple[dict[str, object], object]:
    envelope, event = decode(raw)
    assert envelope.tenant_id == "tenant-1"
    assert envelope.campaign_id == "camp-1"
    assert envelope.causation_id == "queued-event-id"
    assert envelope.correlation_id == "correlation-1"
    assert envelope.occurred_at == AT
    return {"type": envelope.type, "id": envelope.event_id, "version": envelope.version}, event


def test_batch_sent_decodes_to_the_model_with_every_result() -> None:
    rows = [result_row(1, "+1", message_id="m1", parts=2), result_row(2, "+2", error="refused")]
    rows.append(result_row(3, "+3", error="dup", duplicate_of="camp-1:r:0"))
    meta, event = decoded(outcomes.sent("camp-1:r:1", "r", "bulk-1", rows, 2, cause=CAUSE, at=AT))
    assert meta["type"] == "BatchSent"
    assert event == BatchSent(
        batch_id="camp-1:r:1",
        run_token="r",
        bulk_id="bulk-1",
        results=(
            RecipientResult(id=1, phone="+1", message_id="m1", parts=2),
            RecipientResult(id=2, phone="+2", error="refused"),
            RecipientResult(id=3, phone="+3", error="dup", duplicate_of="camp-1:r:0"),
        ),
        retry_count=2,
        sent_at=AT,
    )


def test_every_other_outcome_decodes_to_its_model() -> None:
    cases = [
        (
            outcomes.claimed("b", "r", [1, 2], cause=CAUSE, at=AT),
            BatchClaimed(batch_id="b", run_token="r", recipient_ids=(1, 2), claimed_at=AT),
        ),
        (
            outcomes.failed("b", "r", [1], "no", 1, cause=CAUSE, at=AT),
            BatchFailed(
                batch_id="b", run_token="r", recipient_ids=(1,), error="no", retry_count=1, failed_at=AT
            ),
        ),
        (
            outcomes.ambiguous("b", "r", [1], "500", 0, cause=CAUSE, at=AT),
            BatchAmbiguous(
                batch_id="b", run_token="r", recipient_ids=(1,), reason="500", retry_count=0, at=AT
            ),
        ),
        (
            outcomes.deferred("b", "r", [1], "paused", cause=CAUSE, at=AT),
            BatchDeferred(batch_id="b", run_token="r", recipient_ids=(1,), reason="paused", at=AT),
        ),
        (
            outcomes.resolved(
                "b",
                "r",
                "operator_resend",
                [result_row(1, "+1", message_id="m")],
                0,
                step=1,
                bulk_id="x",
                retry_count=1,
                cause=CAUSE,
                at=AT,
            ),
            BatchResolved(
                batch_id="b",
                run_token="r",
                resolution="operator_resend",
                bulk_id="x",
                results=(RecipientResult(id=1, phone="+1", message_id="m"),),
                remaining=0,
                retry_count=1,
                resolved_at=AT,
            ),
        ),
    ]
    for raw, model in cases:
        _, event = decoded(raw)
        assert event == model


def test_the_same_outcome_of_the_same_batch_has_the_same_id_and_resolution_steps_differ() -> None:
    one = decoded(outcomes.ambiguous("b", "r", [1], "x", 0, cause=CAUSE, at=AT))[0]["id"]
    again = decoded(outcomes.ambiguous("b", "r", [1], "y", 3, cause=CAUSE, at=AT))[0]["id"]
    other_batch = decoded(outcomes.ambiguous("b2", "r", [1], "x", 0, cause=CAUSE, at=AT))[0]["id"]
    step1 = decoded(outcomes.resolved("b", "r", "status_lookup", [], 1, step=1, cause=CAUSE, at=AT))[0]["id"]
    step2 = decoded(outcomes.resolved("b", "r", "status_lookup", [], 0, step=2, cause=CAUSE, at=AT))[0]["id"]
    assert one == again
    assert len({one, other_batch, step1, step2}) == 4


def queued(**changes: object) -> BatchQueued:
    fields: dict[str, object] = {
        "batch_id": "camp-9:r:0",
        "run_token": "r",
        "batch_no": 0,
        "sender_id": None,
        "template": "Hi",
        "message_type": MessageType.MARKETING,
        "recipients": (BatchRecipient(id=1, phone="+306940000001", values={"first_name": "A"}),),
    }
    fields.update(changes)
    return BatchQueued(**fields)  # type: ignore[arg-type]


def test_batch_queued_is_read_with_what_its_outcomes_refer_to() -> None:
    batch = queued()
    raw = encode(envelope_for(batch, occurred_at=AT, tenant_id="t", campaign_id="camp-9", event_id="e-1"))
    cause, read = decode_batch(raw)
    assert read == batch
    assert cause == Cause("t", "camp-9", "e-1", "e-1")


def test_a_batch_without_campaign_in_its_envelope_takes_it_from_the_batch_id() -> None:
    raw = encode(envelope_for(queued(), occurred_at=AT, tenant_id="t", event_id="e-1"))
    assert decode_batch(raw)[0].campaign_id == "camp-9"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not an event envelope"),
        (
            encode(envelope_for(CampaignPaused(run_token="r", paused_at=AT), occurred_at=AT, tenant_id="t")),
            "unexpected CampaignPaused on sms.batches",
        ),
        (
            orjson.dumps(
                {**orjson.loads(encode(envelope_for(queued(), occurred_at=AT, tenant_id="t"))), "version": 9}
            ),
            "BatchQueued v9 is newer than this reader",
        ),
        (
            orjson.dumps(
                {
                    **orjson.loads(encode(envelope_for(queued(), occurred_at=AT, tenant_id="t"))),
                    "payload": {"batch_id": "x"},
                }
            ),
            "invalid BatchQueued v1",
        ),
    ],
)
def test_anything_else_on_the_batches_topic_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_batch(raw)
