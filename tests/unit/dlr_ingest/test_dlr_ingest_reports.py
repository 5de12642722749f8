"""Delivery-report bodies and Mitto's statuses: both spellings, one or many, every mapping row, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from dlr_ingest.domain import DELIVERED, FAILED, SENT, BadReport, map_status, parse_lookup, parse_reports

from shared.events import DeliveryStatus

MAPPING = (
    [(raw, DeliveryStatus.DELIVERED) for raw in ("Delivered", "DELIVRD", "completed", "OK", "success")]
    + [
        (raw, DeliveryStatus.FAILED)
        for raw in (
            "Failure",
            "failed",
            "Undelivered",
            "UNDELIV",
            "Expired",
            "Rejected",
            "REJECTD",
            "Error",
            "deleted",
            "unknown_error",
            "Blocked",
        )
    ]
    + [
        (raw, DeliveryStatus.SENT)
        for raw in ("Sent", "queued", "Accepted", "ACCEPTD", "Submitted", "EnRoute", "Pending", "buffered")
    ]
)


@pytest.mark.parametrize(("raw", "status"), MAPPING)
def test_every_mapping_row_matches_in_any_case(raw: str, status: DeliveryStatus) -> None:
    assert map_status(raw) == status
    assert map_status(raw.upper()) == status
    assert map_status(f"  {raw.lower()} ") == status


def test_the_mapping_table_covers_every_listed_value() -> None:
    assert {raw.lower() for raw, _ in MAPPING} == DELIVERED | FAILED | SENT


def test_failure_with_a_capital_f_is_final_failed() -> None:
    (report,) = parse_reports(b'{"messageId": "m1", "deliveryStatus": "Failure"}', max_reports=10)
    assert report.status == DeliveryStatus.FAILED
    assert report.raw_status == "Failure"


def test_an_unknown_status_is_kept_raw_and_not_final() -> None:
    (report,) = parse_reports(b'{"messageId": "m1", "deliveryStatus": "Quantum-Limbo"}', max_reports=10)
    assert report.status == DeliveryStatus.UNKNOWN
    assert report.raw_status == "Quantum-Limbo"


def test_a_substring_of_a_known_status_is_not_that_status() -> None:
    assert map_status("NotDelivered") == DeliveryStatus.UNKNOWN
    assert map_status("Undelivered") == DeliveryStatus.FAILED


def test_one_object_with_the_production_spelling() -> None:
    body = orjson.dumps(
        {
            "messageId": "01KC69MT19BRK5MSXG1V95YPHX",
            "deliveryStatus": "Delivered",
            "updatedAt": "2025-12-11T08:50:10.4140965Z",
            "error": None,
        }
    )
    (report,) = parse_reports(body, max_reports=10)
    assert report.message_id == "01KC69MT19BRK5MSXG1V95YPHX"
    assert report.status == DeliveryStatus.DELIVERED
    assert report.error is None
    assert report.provider_time == datetime(2025, 12, 11, 8, 50, 10, 414096, tzinfo=UTC)


def test_an_array_with_the_other_spelling() -> None:
    body = orjson.dumps(
        [
            {
                "messageId": "a",
                "status": "Failure",
                "timestamp": "2025-12-11T10:50:10+02:00",
                "errorcode": 34,
            },
            {"messageId": "b", "status": "sent", "description": "queued at carrier"},
        ]
    )
    first, second = parse_reports(body, max_reports=10)
    assert (first.message_id, first.status, first.error) == ("a", DeliveryStatus.FAILED, "34")
    assert first.provider_time == datetime(2025, 12, 11, 10, 50, 10, tzinfo=timezone(timedelta(hours=2)))
    assert (second.message_id, second.status, second.error) == ("b", DeliveryStatus.SENT, "queued at carrier")
    assert second.provider_time is None


def test_delivery_status_wins_over_status_when_both_are_present() -> None:
    (report,) = parse_reports(
        b'{"messageId": "a", "deliveryStatus": "Delivered", "status": "Sent"}', max_reports=10
    )
    assert report.status == DeliveryStatus.DELIVERED


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "MALFORMED_JSON"),
        (b"", "MALFORMED_JSON"),
        (b"[]", "EMPTY_BATCH"),
        (b"42", "INVALID_REPORT"),
        (b'"Delivered"', "INVALID_REPORT"),
        (b"[null]", "INVALID_REPORT"),
        (b'{"deliveryStatus": "Delivered"}', "INVALID_REPORT"),
        (b'{"messageId": "", "deliveryStatus": "Delivered"}', "INVALID_REPORT"),
        (b'{"messageId": 7, "deliveryStatus": "Delivered"}', "INVALID_REPORT"),
        (b'{"messageId": "a"}', "INVALID_REPORT"),
        (b'{"messageId": "a", "deliveryStatus": 3}', "INVALID_REPORT"),
        (b'{"messageId": "a", "deliveryStatus": "Delivered", "updatedAt": "yesterday"}', "INVALID_REPORT"),
        (
            b'{"messageId": "a", "deliveryStatus": "Delivered", "updatedAt": "2025-01-01T00:00:00"}',
            "INVALID_REPORT",
        ),
        (b'{"messageId": "a", "deliveryStatus": "Delivered", "error": {"x": 1}}', "INVALID_REPORT"),
        (b'{"messageId": "a", "deliveryStatus": "Delivered", "error": true}', "INVALID_REPORT"),
        (b'[{"messageId": "a", "deliveryStatus": "Delivered"}, {"messageId": "b"}]', "INVALID_REPORT"),
    ],
)
def test_bad_bodies_are_refused_with_a_code(body: bytes, code: str) -> None:
    with pytest.raises(BadReport) as refused:
        parse_reports(body, max_reports=10)
    assert refused.value.code == code


def test_too_many_reports_in_one_body_are_refused() -> None:
    body = orjson.dumps([{"messageId": str(i), "deliveryStatus": "Sent"} for i in range(11)])
    with pytest.raises(BadReport) as refused:
        parse_reports(body, max_reports=10)
    assert refused.value.code == "TOO_MANY_REPORTS"


def test_a_lookup_answer_is_a_report_and_drops_the_description_of_a_delivered_message() -> None:
    body = orjson.dumps(
        {
            "messageId": "01KC69",
            "text": "Hi!",
            "deliveryStatus": "Delivered",
            "description": "Delivered to handset",
            "createdAt": "2025-12-11T08:50:04.5000993Z",
            "updatedAt": "2025-12-11T08:50:10.4140965Z",
        }
    )
    report = parse_lookup(body)
    assert (report.message_id, report.status, report.error) == ("01KC69", DeliveryStatus.DELIVERED, None)


def test_a_failed_lookup_keeps_its_description_as_the_error() -> None:
    report = parse_lookup(
        b'{"messageId": "x", "deliveryStatus": "Failure", "description": "Absent subscriber"}'
    )
    assert (report.status, report.error) == (DeliveryStatus.FAILED, "Absent subscriber")
