"""Response shapes and cursors of the read API, and the synthetic logs the other tests rely on."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from projector.synthetic import CampaignShape, Counter, Log, add_campaign, add_tenant, interleave
from projector.views import BadCursor, campaign_view, csv_lines, decode_cursor, encode_cursor, status_view

AT = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def a_row(**extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "6f1c1d7e-2c3b-4d5e-8f90-0a1b2c3d4e5f",
        "tenant_id": "0a1b2c3d-4e5f-4a7b-8c9d-0e1f2a3b4c5d",
        "name": "Autumn sale",
        "message_text": "Hi",
        "message_type": "marketing",
        "channel": "shopify",
        "sender_id": None,
        "offer_url": None,
        "status": "sending",
        "run_token": "r1",
        "run_kind": "initial",
        "total": 10,
        "accepted": 8,
        "rejected": 0,
        "delivered": 5,
        "delivery_failed": 2,
        "processing": 2,
        "ambiguous": 0,
        "clicked": 1,
        "clicks": 3,
        "unsubscribed": 0,
        "credits_reserved": 10,
        "credits_debited": 8,
        "credits_released": 0,
        "created_at": AT,
        "scheduled_at": None,
        "started_at": AT,
        "finished_at": None,
        "updated_at": AT,
        "last_enqueue_error_code": None,
        "last_enqueue_error_message": None,
        "last_enqueue_error_at": None,
    }
    row.update(extra)
    return row


def test_the_status_body_offers_the_seed_frontends_fields() -> None:
    body = status_view(a_row(), {"Delivered": 5, "Failure": 2})  # type: ignore[arg-type]
    assert body["campaign"]["status"] == "sending"
    assert {k: body["stats"][k] for k in ("total", "sent", "failed", "processed")} == {
        "total": 10,
        "sent": 6,
        "failed": 2,
        "processed": 8,
    }
    assert body["metrics"] == {
        "total": 10,
        "queued": 0,
        "processing": 2,
        "accepted": 8,
        "delivered": 5,
        "deliveryFailed": 2,
        "pendingDelivery": 1,
        "processed": 8,
    }
    assert body["recipients"]["processing"] == 2
    assert body["deliveryStatus"] == {"Delivered": 5, "Failure": 2}
    assert body["campaign"]["progress"] == 80.0
    assert body["campaign"]["cost"] == {"reserved": 10, "debited": 8, "released": 0}


def test_the_last_enqueue_refusal_is_shown_until_the_next_run() -> None:
    view = campaign_view(
        a_row(last_enqueue_error_code="INSUFFICIENT_CREDITS", last_enqueue_error_message="m")
    )  # type: ignore[arg-type]
    assert view["lastEnqueueError"] == {"code": "INSUFFICIENT_CREDITS", "message": "m", "at": None}
    assert campaign_view(a_row())["lastEnqueueError"] is None  # type: ignore[arg-type]


def test_a_cursor_round_trips_and_is_tied_to_its_listing() -> None:
    cursor = encode_cursor("recipients", 42)
    assert decode_cursor("recipients", cursor) == [42]
    with pytest.raises(BadCursor):
        decode_cursor("campaigns", cursor)
    with pytest.raises(BadCursor):
        decode_cursor("recipients", "not-a-cursor!")


def test_csv_has_a_header_and_empty_cells_for_missing_values() -> None:
    row = dict.fromkeys(("id", "phone", "status", "batchId", "providerMessageId", "bulkId", "deliveryStatus", "sentAt", "deliveredAt", "failedAt", "error", "retryCount", "parts"))  # fmt: skip
    row.update(id=7, phone="+306941000007", status="sent", error='bad, "quoted"')
    text = csv_lines([row], header=True)
    header, line = text.strip().split("\n")
    assert header.startswith("id,phone,status,batchId,providerMessageId")
    assert line.startswith("7,+306941000007,sent,,")
    assert '"bad, ""quoted"""' in line


def test_duplicates_land_later_in_their_own_partition() -> None:
    log = Log(partitions=2)
    rng = random.Random(3)
    add_campaign(
        log, rng, add_tenant(log, rng), CampaignShape(recipients=20, batch_size=5), Counter(), Counter()
    )
    before = {tp: list(s) for tp, s in log.streams.items()}
    log.duplicate(rng, 0.5)
    for tp, stream in log.streams.items():
        assert len(stream) > len(before[tp]) or len(before[tp]) < 2
        for i, item in enumerate(stream):
            first = stream.index(item)
            assert first <= i  # a copy never comes before its original


def test_an_interleaving_keeps_each_partitions_order_and_loses_nothing() -> None:
    log = Log(partitions=3)
    rng = random.Random(4)
    add_campaign(log, rng, add_tenant(log, rng), CampaignShape(recipients=30, batch_size=4, max_reports=2),
                 Counter(), Counter())  # fmt: skip
    polls = interleave(log, random.Random(5), max_poll=7)
    seen = [r for poll in polls for r in poll]
    assert sorted((r.topic, r.partition, r.offset) for r in seen) == sorted(
        (r.topic, r.partition, r.offset) for r in log.in_order()
    )
    for tp in log.records():
        offsets = [r.offset for r in seen if (r.topic, r.partition) == tp]
        assert offsets == sorted(offsets)
    parts = log.segments(4)
    whole = Log(partitions=3)
    for part in parts:
        whole.extend(part)
    assert whole.records() == log.records()
