"""Reading sms.batches for the link catalogue: the fast read agrees with `shared.events.decode`, anything
else is decoded in full, and what cannot be decoded is set aside for the dead-letter topic."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from dlr_ingest.catalogue import read_record
from dlr_ingest.domain import catalogue
from dlr_ingest.intake import BatchLinks, read_batch

from shared.broker import decode_records
from shared.events import (
    BatchQueued,
    BatchRecipient,
    Channel,
    DecodeError,
    Event,
    MessageType,
    TenantRegistered,
    decode,
    encode,
    envelope_for,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


def batch(ids: list[int], batch_id: str = "c1:run:0") -> BatchQueued:
    return BatchQueued(
        batch_id=batch_id,
        run_token="run",
        batch_no=0,
        sender_id=None,
        template="Hi {{first_name}}",
        message_type=MessageType.MARKETING,
        recipients=tuple(
            BatchRecipient(id=i, phone=f"+30694{i:07d}", values={"first_name": f"N{i}"}) for i in ids
        ),
        offer_url="https://shop.example/o",
    )


def raw(event: Event, campaign: str | None = "c1") -> bytes:
    return encode(envelope_for(event, occurred_at=AT, tenant_id="t1", campaign_id=campaign))


def edited(event: Event, change: dict[str, Any]) -> bytes:
    data = orjson.loads(raw(event))
    for key, value in change.items():
        if key == "first_id":
            data["payload"]["recipients"][0]["id"] = value
        else:
            data[key] = value
    return orjson.dumps(data)


def test_a_current_batch_is_read_for_its_links_only() -> None:
    envelope, event = read_batch(raw(batch([5, 3, 9])))
    assert isinstance(event, BatchLinks)
    assert (envelope.tenant_id, envelope.campaign_id) == ("t1", "c1")
    assert (event.batch_id, event.offer_url) == ("c1:run:0", "https://shop.example/o")
    assert event.recipients == (
        {"id": 5, "phone": "+306940000005"},
        {"id": 3, "phone": "+306940000003"},
        {"id": 9, "phone": "+306940000009"},
    )


def test_the_fast_read_and_the_full_decode_give_the_same_catalogue() -> None:
    records = [raw(batch([12, 4, 30])), raw(batch([7], "c2:run:0"), campaign=None)]
    fast = catalogue([read_batch(r) for r in records])
    full = catalogue([decode(r) for r in records])
    assert fast == full
    row = fast.batches["c1:run:0"]
    assert (row.min_id, row.max_id, row.ids) == (4, 30, [12, 4, 30])
    assert row.phones == ["+306940000012", "+306940000004", "+306940000030"]
    assert fast.batches["c2:run:0"].campaign_id == "c2"


def test_a_batch_without_recipients_adds_no_row() -> None:
    c = catalogue([read_batch(raw(batch([])))])
    assert c.batches == {}
    assert c.batch_offers["c1"].offer_url == "https://shop.example/o"


def test_another_event_on_the_topic_is_decoded_in_full() -> None:
    tenant = TenantRegistered(name="Corner Shop", channel=Channel.SHOPIFY, default_region="GR")
    _, event = read_batch(raw(tenant, campaign=None))
    assert event == tenant


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not an event envelope"),
        (edited(batch([1]), {"version": BatchQueued.VERSION + 1}), "newer than this reader"),
        (edited(batch([1]), {"first_id": "one"}), "invalid BatchQueued"),
    ],
)
def test_what_cannot_be_decoded_raises_for_the_dead_letter_topic(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        read_batch(body)


def test_records_keep_their_log_order_and_undecodable_ones_are_set_aside() -> None:
    tenant = TenantRegistered(name="Corner Shop", channel=Channel.SHOPIFY, default_region="GR")
    records = [
        SimpleNamespace(topic="sms.batches", partition=0, offset=0, key=b"c1", value=raw(batch([1]))),
        SimpleNamespace(topic="tenant.events", partition=1, offset=4, key=b"t1", value=raw(tenant)),
        SimpleNamespace(topic="sms.batches", partition=0, offset=1, key=b"c1", value=b"{}"),
        SimpleNamespace(topic="tenant.events", partition=1, offset=5, key=b"t1", value=b"{}"),
    ]
    good, bad = decode_records(records, read_record)
    assert [(d.topic, d.offset, type(d.event)) for d in good] == [
        ("sms.batches", 0, BatchLinks),
        ("tenant.events", 4, TenantRegistered),
    ]
    assert [(u.topic, u.offset, u.raw) for u in bad] == [
        ("sms.batches", 1, b"{}"),
        ("tenant.events", 5, b"{}"),
    ]
    assert all(u.reason.startswith("not an event envelope") for u in bad)
