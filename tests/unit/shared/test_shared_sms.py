from __future__ import annotations

import pytest

from shared.sms import compose, placeholder_names, render, segments


def test_placeholders_match_case_insensitively_in_both_seed_spellings() -> None:
    values = {"first_name": "Ada", "last_name": "Lovelace"}
    assert render("Hi {{First_Name}} {{LASTNAME}}", values) == "Hi Ada Lovelace"
    assert render("Hi {{ firstName }}!", values) == "Hi Ada!"


def test_a_missing_value_leaves_no_double_space() -> None:
    assert render("Hi {{first_name}} , welcome", {}) == "Hi , welcome"
    assert render("Dear  {{first_name}}  friend", {}) == "Dear friend"


def test_placeholder_names_are_canonical() -> None:
    assert placeholder_names("{{firstName}} {{discount_code}} {{Other}}") == {
        "first_name",
        "discount_code",
        "other",
    }


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters count twice: 160 septets
        ("€" * 81, "GSM-7", 2),
        ("Γειά σου κόσμε" + "a" * 56, "UCS-2", 1),  # noqa: RUF001 - lower-case Greek is outside GSM-7
        ("ά" * 71, "UCS-2", 2),
        ("ά" * 134, "UCS-2", 2),
        ("ά" * 135, "UCS-2", 3),
        ("🙂" * 35, "UCS-2", 1),  # an emoji is two UTF-16 units
        ("🙂" * 36, "UCS-2", 2),
    ],
)
def test_parts_follow_gsm7_and_ucs2_limits(text: str, encoding: str, parts: int) -> None:
    s = segments(text)
    assert (s.encoding, s.parts) == (encoding, parts)


def test_characters_left_in_the_last_part() -> None:
    assert segments("a" * 150).left_in_part == 10
    assert segments("a" * 161).left_in_part == 153 * 2 - 161


def test_marketing_texts_carry_offer_and_unsubscribe_links_and_service_texts_none() -> None:
    marketing = compose(
        "Hi {{first_name}}",
        {"first_name": "Ada"},
        marketing=True,
        offer_link="https://x/l/T",
        unsubscribe_link="https://x/u/U",
    )
    assert marketing == "Hi Ada\nClaim Offer: https://x/l/T\nTo unsubscribe, tap: https://x/u/U"
    service = compose(
        "Your code is 1234", {}, marketing=False, offer_link="https://x/l/T", unsubscribe_link="https://x/u/U"
    )
    assert service == "Your code is 1234"
