import re
from dataclasses import replace
from typing import Any

import pytest
from mitto_sim.domain import (
    ALT_SPELLING,
    DELIVERED,
    DESTINATION_REJECTED,
    DUPLICATE,
    EMPTY_TEXT,
    FAILURE,
    INVALID_DESTINATION,
    INVALID_SENDER,
    SENT,
    Fault,
    MessageIds,
    ReportShares,
    campaign_of,
    choose_fault,
    count_parts,
    judge_item,
    parse_e164,
    plan_reports,
    rejection_modulus,
    report_payload,
)


def test_one_percent_rule_rejects_exactly_one_hundred_of_ten_thousand_consecutive_numbers() -> None:
    modulus = rejection_modulus(0.01)
    verdicts = [judge_item(f"+3069{n:08d}", "Hi", "Shop", modulus)[0] for n in range(10_000)]
    assert verdicts.count(DESTINATION_REJECTED) == 100
    assert verdicts.count(None) == 9_900


def test_no_rejection_rule_without_a_share() -> None:
    assert rejection_modulus(0.0) == 0
    assert judge_item("+306900000000", "Hi", "Shop", 0) == (None, 306900000000, 1)


@pytest.mark.parametrize(
    ("destination", "digits"),
    [("+30690000", 30690000), ("+306912345678", 306912345678), ("+123456789012345", 123456789012345)],
)
def test_valid_e164_destinations_parse_to_their_digits(destination: str, digits: int) -> None:
    assert parse_e164(destination) == digits


@pytest.mark.parametrize(
    "destination",
    [
        "",
        "+",
        "306912345678",
        "+3069123",
        "+1234567890123456",
        "+30691234567a",
        "+0306912345",
        "+३०६९१२३४५६७",
    ],
)
def test_invalid_destinations_are_refused(destination: str) -> None:
    assert parse_e164(destination) is None
    assert judge_item(destination, "Hi", "Shop", 0)[0] == INVALID_DESTINATION


def test_empty_text_and_bad_sender_are_rejected() -> None:
    assert judge_item("+306912345678", "", "Shop", 0)[0] == EMPTY_TEXT
    assert judge_item("+306912345678", "Hi", "", 0)[0] == INVALID_SENDER
    assert judge_item("+306912345678", "Hi", "TwelveLetter", 0)[0] == INVALID_SENDER
    assert judge_item("+306912345678", "Hi", "1234567890123456", 0)[0] is None


@pytest.mark.parametrize(
    ("length", "parts"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_texts_hold_160_then_153_per_part(length: int, parts: int) -> None:
    assert count_parts("a" * length) == parts


def test_gsm7_extension_characters_take_two_septets() -> None:
    assert count_parts("€" * 80) == 1
    assert count_parts("€" * 81) == 2
    assert count_parts("a" * 159 + "^") == 2
    assert count_parts("{}[]~|\\" + "a" * 146) == 1


def test_greek_capitals_of_the_gsm7_alphabet_stay_gsm7() -> None:
    assert count_parts("Δ" * 160) == 1


@pytest.mark.parametrize("odd", ["\N{GREEK SMALL LETTER ALPHA}", "ç", "`"])
def test_one_character_outside_gsm7_switches_to_ucs2(odd: str) -> None:
    assert count_parts(odd + "a" * 69) == 1
    assert count_parts(odd + "a" * 70) == 2
    assert count_parts(odd + "a" * 133) == 2
    assert count_parts(odd + "a" * 134) == 3


def test_an_emoji_takes_two_ucs2_units() -> None:
    assert count_parts("😀" + "a" * 68) == 1
    assert count_parts("😀" + "a" * 69) == 2


def test_campaign_is_the_reference_before_the_first_colon() -> None:
    assert campaign_of("c-42:r-7:x") == "c-42"
    assert campaign_of("c-42") == "c-42"
    assert campaign_of(None) == "-"


def test_message_ids_are_26_crockford_characters_unique_and_sorted() -> None:
    ids = MessageIds(start_ms=1_765_000_000_000, nonce=12345)
    issued = [ids.encode(counter) for counter in range(0, 3_000_000, 7)]
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", mid) for mid in issued)
    assert len(set(issued)) == len(issued)
    assert issued == sorted(issued)


def test_message_ids_decode_to_their_counter_and_foreign_ids_do_not() -> None:
    ids = MessageIds(start_ms=1_765_000_000_000, nonce=1)
    other_run = MessageIds(start_ms=1_765_000_000_001, nonce=1)
    for counter in (0, 1, 1023, 1024, 2**30 + 5, 2**40 - 1):
        assert ids.decode(ids.encode(counter)) == counter
    assert ids.decode(other_run.encode(5)) is None
    assert ids.decode("01KC69MT19BRK5MSXG1V95YPHX") is None
    assert ids.decode(ids.encode(5)[:-1] + "U") is None


def test_one_draw_chooses_at_most_one_fault() -> None:
    def fault(draw: float) -> Fault:
        return choose_fault(draw, http_429_share=0.1, http_500_share=0.2, timeout_share=0.3)

    assert [fault(d) for d in (0.0, 0.099, 0.101, 0.299, 0.301, 0.599, 0.601, 0.999)] == [
        Fault.HTTP_429,
        Fault.HTTP_429,
        Fault.HTTP_500,
        Fault.HTTP_500,
        Fault.TIMEOUT,
        Fault.TIMEOUT,
        Fault.NONE,
        Fault.NONE,
    ]


def shares(**overrides: Any) -> ReportShares:
    return replace(ReportShares(delay_ms=1000, jitter_ms=0, **dict.fromkeys(SHARES, 0.0)), **overrides)


SHARES = ("failure", "duplicate", "sent_first", "out_of_order", "alt_spelling")


def test_plain_plan_is_one_delivered_report_after_the_delay() -> None:
    assert shares().plain
    assert plan_reports(lambda: 0.5, shares()) == [(1000, DELIVERED)]


def test_failure_duplicate_and_late_sent_reports_are_planned_in_order() -> None:
    plan = plan_reports(lambda: 0.0, shares(failure=1.0, duplicate=1.0, out_of_order=1.0, alt_spelling=1.0))
    ordered = [code for _, code in sorted(plan)]
    assert ordered == [FAILURE | ALT_SPELLING, FAILURE | ALT_SPELLING | DUPLICATE, SENT | ALT_SPELLING]


def test_sent_first_precedes_the_final_report() -> None:
    plan = plan_reports(lambda: 0.0, shares(sent_first=1.0, jitter_ms=500))
    assert [code for _, code in sorted(plan)] == [SENT, DELIVERED]


def test_report_payload_in_both_spellings() -> None:
    assert report_payload("ID", FAILURE, "2025-12-11T08:50:10.414Z") == {
        "messageId": "ID",
        "deliveryStatus": "Failure",
        "updatedAt": "2025-12-11T08:50:10.414Z",
        "error": "Undeliverable",
    }
    assert report_payload("ID", DELIVERED | ALT_SPELLING, "T") == {
        "messageId": "ID",
        "status": "Delivered",
        "errorcode": None,
        "timestamp": "T",
    }
