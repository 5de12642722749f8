"""The sender's decisions on plain data: defer or send, retry or not, per-item results, resolutions."""

import pytest
from sender.domain import (
    DUPLICATE_ERROR,
    Control,
    Prepared,
    backoff_seconds,
    duplicate_rows,
    go_or_defer,
    judge,
    only_claimed,
    prepare,
    resolve_by_lookups,
    resolve_by_operator_fail,
    resolve_with_answer,
    should_retry,
)
from sender.mitto import Accepted, Ambiguous, Found, NotSent

from shared.events import BatchQueued, BatchRecipient, MessageType
from shared.links import LinkSettings


def recipients(n: int, first_id: int = 1) -> list[BatchRecipient]:
    return [BatchRecipient(id=first_id + i, phone=f"+3069400000{i:02d}") for i in range(n)]


def a_batch(template: str = "Hi {{first_name}}", sender_id: str | None = None, **kw: object) -> BatchQueued:
    return BatchQueued(
        batch_id="c:r:0",
        run_token="r",
        batch_no=0,
        sender_id=sender_id,
        template=template,
        message_type=kw.pop("message_type", MessageType.SERVICE),  # type: ignore[arg-type]
        recipients=tuple(kw.pop("recipients", recipients(2))),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("control", "run", "expected"),
    [
        (None, "r1", "send"),
        (Control("sending", "r1"), "r1", "send"),
        (Control("paused", "r1"), "r1", "paused"),
        (Control("cancelled", "r1"), "r1", "cancelled"),
        (Control("cancelled", None), "r1", "cancelled"),
        (Control("sending", "r2"), "r1", "send"),  # the per-phone claim, not the token, prevents a resend
        (Control("finished", "r1"), "r2", "send"),  # a retry run's batch before its CampaignEnqueued
        (Control("paused", "r0"), "r1", "send"),  # an older run was paused; this one was not
        (Control("finished", "r1"), "r1", "send"),
    ],
)
def test_a_batch_goes_out_unless_its_run_was_stopped(
    control: Control | None, run: str, expected: str
) -> None:
    assert go_or_defer(control, run) == expected


def test_request_items_carry_destination_text_sender_and_a_reference_to_the_recipient() -> None:
    batch = a_batch(
        "Code {{discount_code}}",
        recipients=[BatchRecipient(id=7, phone="+306941234567", values={"discount_code": "X"})],
    )
    prepared = prepare(
        batch,
        batch.recipients,
        campaign_id="camp",
        traffic_account="acc",
        default_sender="Dflt",
        links=LinkSettings(),
    )
    assert prepared.messages == [
        {
            "trafficAccountId": "acc",
            "destination": "+306941234567",
            "sms": {"text": "Code X", "sender": "Dflt"},
            "reference": "camp:7",
        }
    ]
    assert prepared.parts == [1]


def test_the_batch_sender_id_wins_over_the_default() -> None:
    batch = a_batch(sender_id="Tenant")
    prepared = prepare(
        batch,
        batch.recipients,
        campaign_id="c",
        traffic_account="a",
        default_sender="D",
        links=LinkSettings(),
    )
    assert {m["sms"]["sender"] for m in prepared.messages} == {"Tenant"}


def test_items_of_suppressed_recipients_are_dropped() -> None:
    rs = recipients(3)
    prepared = Prepared([{"n": 0}, {"n": 1}, {"n": 2}], [1, 2, 3])
    kept = only_claimed(prepared, rs, {rs[1].id: "other"})
    assert kept == Prepared([{"n": 0}, {"n": 2}], [1, 3])


def test_backoff_grows_is_capped_and_never_undercuts_retry_after() -> None:
    delays = [backoff_seconds(a, base=0.5, cap=4.0, retry_after=None, jitter=0.999) for a in range(1, 7)]
    assert delays == pytest.approx([0.4995, 0.999, 1.998, 3.996, 3.996, 3.996])
    assert backoff_seconds(1, base=0.5, cap=4.0, retry_after=None, jitter=0.0) == 0.0
    assert backoff_seconds(1, base=0.5, cap=4.0, retry_after=7.0, jitter=0.5) == 7.0


def test_only_what_provably_never_reached_the_provider_is_retried() -> None:
    assert should_retry(NotSent(retry=True, error="429", status=429), 1, 3)
    assert not should_retry(NotSent(retry=True, error="429", status=429), 3, 3)
    assert not should_retry(NotSent(retry=False, error="400", status=400), 1, 3)
    assert not should_retry(Ambiguous("500"), 1, 3)
    assert not should_retry(Accepted(None, (), ()), 1, 3)


def test_results_are_matched_by_position_and_an_item_without_id_fails_with_the_reason() -> None:
    rs = recipients(3)
    verdict = judge(rs, [1, 2, 1], Accepted("bulk", ("m1", None, "m3"), (None, "invalid destination", None)))
    assert verdict.status == "sent"
    assert verdict.bulk_id == "bulk"
    assert [(r["id"], r["message_id"], r["parts"], r["error"]) for r in verdict.results] == [
        (1, "m1", 1, None),
        (2, None, 2, "invalid destination"),
        (3, "m3", 1, None),
    ]
    assert verdict.rejected == [rs[1].phone]


def test_a_refused_call_fails_every_recipient_and_an_unknown_one_is_ambiguous() -> None:
    rs = recipients(2)
    failed = judge(rs, [1, 1], NotSent(retry=False, error="provider refused (400): bad", status=400))
    assert (failed.status, failed.error, failed.rejected) == (
        "failed",
        "provider refused (400): bad",
        [r.phone for r in rs],
    )
    unknown = judge(rs, [1, 1], Ambiguous("provider error 500", ("m9",)))
    assert (unknown.status, unknown.error, unknown.rejected, unknown.known_ids) == (
        "ambiguous",
        "provider error 500",
        [],
        ("m9",),
    )


def test_suppressed_recipients_name_the_batch_that_holds_their_phone() -> None:
    rs = recipients(2)
    rows = duplicate_rows(rs, {rs[0].id: "c:r0:3"})
    assert rows == [
        {
            "id": 1,
            "phone": rs[0].phone,
            "message_id": None,
            "parts": 1,
            "error": DUPLICATE_ERROR,
            "duplicate_of": "c:r0:3",
        }
    ]


def test_a_late_answer_settles_only_recipients_the_batch_still_holds() -> None:
    rs = recipients(3)
    verdict = judge(rs, [1, 1, 1], Accepted("b", ("m1", None, "m3"), (None, "refused", None)))
    resolution = resolve_with_answer(verdict, rs, {rs[0].phone, rs[1].phone})
    assert [r["id"] for r in resolution.results] == [1, 2]
    assert resolution.accepted == [(rs[0].phone, "m1")]
    assert resolution.rejected == [rs[1].phone]
    assert resolution.abandoned == []


def test_a_late_refusal_fails_them_and_lets_a_later_run_claim_them() -> None:
    rs = recipients(2)
    verdict = judge(rs, [1, 1], NotSent(retry=False, error="provider refused (403): no", status=403))
    resolution = resolve_with_answer(verdict, rs, {r.phone for r in rs})
    assert [r["error"] for r in resolution.results] == ["provider refused (403): no"] * 2
    assert resolution.rejected == [r.phone for r in rs]


def test_an_operator_failure_abandons_the_phones_for_good() -> None:
    rs = recipients(2)
    resolution = resolve_by_operator_fail(rs)
    assert all(r["message_id"] is None and "operator" in r["error"] for r in resolution.results)
    assert resolution.abandoned == [r.phone for r in rs]
    assert resolution.rejected == []


def test_looked_up_messages_are_tied_to_recipients_by_reference_only() -> None:
    rs = recipients(3)
    found = [
        Found("m2", "Delivered", 2, "camp:2"),
        Found("mX", "Sent", 1, "other-campaign:1"),
        Found("mY", "Sent", 1, None),
        Found("m2b", "Sent", 1, "camp:2"),  # a second id for the same recipient is not taken
    ]
    resolution = resolve_by_lookups("camp", rs, found)
    assert resolution.results == [
        {"id": 2, "phone": rs[1].phone, "message_id": "m2", "parts": 2, "error": None, "duplicate_of": None}
    ]
    assert resolution.accepted == [(rs[1].phone, "m2")]
