"""The fast envelope encoder writes exactly what shared.events writes, and murmur2 partitions like Kafka."""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from dlr_ingest.domain import Report, parse_reports
from dlr_ingest.encoding import (
    encode_reports,
    event_ids,
    murmur2,
    murmur2_many,
    partition_for,
    partitions_for,
)

from shared.events import DeliveryReported, DeliveryStatus, decode, encode, envelope_for

AT = datetime(2026, 11, 25, 2, 36, 10, 167694, tzinfo=UTC)

REPORTS = [
    Report(
        "01KC69MT19BRK5MSXG1V95YPHX", "Delivered", DeliveryStatus.DELIVERED, None, AT - timedelta(seconds=3)
    ),
    Report(
        "m-2",
        "Failure",
        DeliveryStatus.FAILED,
        "34",
        datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=2))),
    ),
    Report("m-3", 'Quantum "limbo" ☃', DeliveryStatus.UNKNOWN, "x\ny", None),
    Report("m-4", "Sent", DeliveryStatus.SENT, None, datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize("source", ["webhook", "refresh"])
def test_fast_envelopes_decode_to_the_same_event_and_bytes_as_the_models(source: str) -> None:
    fast = encode_reports(REPORTS, received_at=AT, source=source, tenant_id="t-1", campaign_id="c-1")
    for (key, raw), report in zip(fast, REPORTS, strict=True):
        assert key == report.message_id.encode()
        envelope, event = decode(raw)
        expected = DeliveryReported(
            provider_message_id=report.message_id,
            raw_status=report.raw_status,
            status=report.status,
            error=report.error,
            provider_time=report.provider_time,
            received_at=AT,
            source=source,  # type: ignore[arg-type]
        )
        assert event == expected
        model_made = envelope_for(
            expected, occurred_at=AT, tenant_id="t-1", campaign_id="c-1", event_id=envelope.event_id
        )
        # decode gives the envelope's head (the payload is `event`): compare the heads.
        assert envelope.model_dump(exclude={"payload"}) == model_made.model_dump(exclude={"payload"})
        assert raw == encode(model_made)


def test_parsed_webhook_reports_round_trip_too() -> None:
    body = b'[{"messageId":"a","status":"failed","timestamp":"2025-12-11T08:50:10.4140965Z","errorcode":7}]'
    ((_, raw),) = encode_reports(parse_reports(body, max_reports=5), received_at=AT, source="webhook")
    envelope, event = decode(raw)
    assert isinstance(event, DeliveryReported)
    assert (event.provider_message_id, event.status, event.error) == ("a", DeliveryStatus.FAILED, "7")
    assert envelope.tenant_id is None
    assert envelope.campaign_id is None


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = event_ids(5000) + event_ids(5000)
    assert len(set(ids)) == 10_000
    for value in ids[:50] + ids[-50:]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


@pytest.mark.parametrize("length", [*range(0, 40), 99, 100, 101, 127, 128, 129, 131, 200])
def test_murmur2_equals_the_kafka_clients(length: int) -> None:
    for _ in range(25):
        data = os.urandom(length)
        assert murmur2(data) == aiokafka_murmur2(data)


def test_partitions_are_the_default_partitioners() -> None:
    partitions = list(range(6))
    for _ in range(500):
        key = uuid.uuid4().hex.upper()[:26].encode()
        assert partition_for(key, 6) == DefaultPartitioner()(key, partitions, partitions)


def test_murmur2_of_many_keys_at_once_equals_one_by_one() -> None:
    lengths = [*range(0, 40), 99, 100, 128, 129, 200]
    keys = [os.urandom(n) for n in lengths for _ in range(7)]  # groups of 7 per length: packed side by side
    keys += [os.urandom(26) for _ in range(500)] + [b"", b"a", b"ab"]
    random.shuffle(keys)
    assert murmur2_many(keys) == [aiokafka_murmur2(k) for k in keys]
    assert partitions_for(keys, 6) == [partition_for(k, 6) for k in keys]
    assert murmur2_many([]) == []


def test_a_forked_child_draws_other_event_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running the parent's cleanup
        os.write(write, event_ids(1)[0].encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert child != event_ids(1)[0]
