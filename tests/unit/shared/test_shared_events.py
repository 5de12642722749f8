from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest

from shared import events
from shared.events import (
    BatchQueued,
    BatchRecipient,
    DecodeError,
    DeliveryReported,
    DeliveryStatus,
    EnvelopeHead,
    Event,
    MessageType,
    decode,
    encode,
    envelope_for,
)

AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def a_batch() -> BatchQueued:
    return BatchQueued(
        batch_id="c:r:0",
        run_token="r",
        batch_no=0,
        sender_id="Shop",
        template="Hi {{first_name}}",
        message_type=MessageType.MARKETING,
        recipients=(BatchRecipient(id=1, phone="+306941000001", values={"first_name": "Ada"}),),
    )


def head(envelope: EnvelopeHead) -> dict[str, Any]:
    return {name: getattr(envelope, name) for name in EnvelopeHead.model_fields}


def a_report() -> DeliveryReported:
    return DeliveryReported(
        provider_message_id="01KC69MT19BRK5MSXG1V95YPHX",
        raw_status="Delivered",
        status=DeliveryStatus.DELIVERED,
        provider_time=AT,
        received_at=AT,
        source="webhook",
    )


def test_an_event_survives_encode_and_decode_unchanged() -> None:
    env = envelope_for(a_batch(), occurred_at=AT, tenant_id="t", campaign_id="c")
    decoded_env, event = decode(encode(env))
    assert head(decoded_env) == head(env)
    assert event == a_batch()


@pytest.mark.parametrize("event", [a_batch(), a_report()])
def test_reading_in_one_pass_equals_reading_in_steps(event: Event) -> None:
    raw = encode(envelope_for(event, occurred_at=AT, tenant_id="t", campaign_id="c", event_id="e1"))
    one_pass, in_steps = decode(raw), events._decode_in_steps(raw)
    assert type(one_pass[0]) is not events.Envelope  # the one-pass path was taken
    assert head(one_pass[0]) == head(in_steps[0])
    assert one_pass[1] == in_steps[1] == event
    assert type(one_pass[1]) is type(event)


def test_the_envelope_carries_the_correlation_of_its_cause() -> None:
    cause = envelope_for(a_batch(), occurred_at=AT, tenant_id="t", campaign_id="c")
    effect = envelope_for(a_batch(), occurred_at=AT, tenant_id="t", campaign_id="c", caused_by=cause)
    assert effect.causation_id == cause.event_id
    assert effect.correlation_id == cause.event_id
    third = envelope_for(a_batch(), occurred_at=AT, tenant_id="t", caused_by=effect)
    assert third.correlation_id == cause.event_id


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not an event envelope"),
        (b'{"type": "BatchQueued"}', "not an event envelope"),
        (
            orjson.dumps(
                {"event_id": "1", "type": "Nope", "version": 1, "occurred_at": AT.isoformat(), "payload": {}}
            ),
            "unknown event type",
        ),
        (
            orjson.dumps(
                {
                    "event_id": "1",
                    "type": "BatchQueued",
                    "version": 9,
                    "occurred_at": AT.isoformat(),
                    "payload": {},
                }
            ),
            "newer than this reader",
        ),
        (
            orjson.dumps(
                {
                    "event_id": "1",
                    "type": "BatchQueued",
                    "version": 1,
                    "occurred_at": AT.isoformat(),
                    "payload": {"batch_id": 3},
                }
            ),
            "invalid BatchQueued",
        ),
    ],
)
def test_every_undecodable_input_is_one_decode_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(raw)


def test_an_unknown_payload_field_is_refused_not_dropped() -> None:
    env = envelope_for(a_batch(), occurred_at=AT, tenant_id="t")
    raw = orjson.loads(encode(env))
    raw["payload"]["surprise"] = 1
    with pytest.raises(DecodeError):
        decode(orjson.dumps(raw))


class Shout(Event):
    VERSION: ClassVar[int] = 3
    text: str
    volume: int
    source: str


def test_old_versions_are_lifted_through_every_upcaster_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    def v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "volume": 1}

    def v2_to_v3(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "source": "webhook"}

    monkeypatch.setitem(events.EVENT_TYPES, "Shout", Shout)
    monkeypatch.setitem(events.UPCASTERS, ("Shout", 1), v1_to_v2)
    monkeypatch.setitem(events.UPCASTERS, ("Shout", 2), v2_to_v3)
    raw = orjson.dumps(
        {
            "event_id": "e",
            "type": "Shout",
            "version": 1,
            "occurred_at": AT.isoformat(),
            "payload": {"text": "hi"},
        }
    )
    _, event = decode(raw)
    assert event == Shout(text="hi", volume=1, source="webhook")


def test_a_missing_upcaster_is_a_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(events.EVENT_TYPES, "Shout", Shout)
    raw = orjson.dumps(
        {
            "event_id": "e",
            "type": "Shout",
            "version": 1,
            "occurred_at": AT.isoformat(),
            "payload": {"text": "hi"},
        }
    )
    with pytest.raises(DecodeError):
        decode(raw)


def test_events_are_immutable() -> None:
    report = DeliveryReported(
        provider_message_id="m",
        raw_status="Delivered",
        status=DeliveryStatus.DELIVERED,
        received_at=AT,
        source="webhook",
    )
    with pytest.raises(ValueError, match="frozen"):
        report.raw_status = "Failure"  # type: ignore[misc]
