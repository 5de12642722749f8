from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.sms import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    PLACEHOLDER_ALIASES,
    Segments,
    compose,
    parts,
    placeholder_names,
    render,
    segments,
)


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


def _segments_by_definition(text: str) -> Segments:
    """The rule read character by character: the fast scan in `segments` must agree with it."""
    gsm = all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)
    units = sum(2 if c in GSM7_EXTENSION else 1 for c in text) if gsm else len(text.encode("utf-16-le")) // 2
    single, multi = (160, 153) if gsm else (70, 67)
    parts = 1 if units <= single else -(-units // multi)
    per_part = single if parts == 1 else multi
    return Segments("GSM-7" if gsm else "UCS-2", parts, units, per_part, parts * per_part - units)


_GSM_ALPHABET = "".join(sorted(GSM7_BASIC | GSM7_EXTENSION))


@given(
    st.one_of(
        st.text(alphabet=_GSM_ALPHABET, max_size=400),
        st.text(alphabet=_GSM_ALPHABET + "`\u0391À😀\u00a0\t", max_size=400),
        st.text(max_size=200),
    )
)
def test_segments_agree_with_the_character_by_character_rule(text: str) -> None:
    assert segments(text) == _segments_by_definition(text)


@given(st.text(alphabet=_GSM_ALPHABET + "`\u0391😀", max_size=400))
def test_parts_is_the_segments_part_count(text: str) -> None:
    assert parts(text) == segments(text).parts


def _render_by_regex(template: str, values: dict[str, str]) -> str:
    """The rendering rule as one regex substitution, then the whitespace rule line by line."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        return values.get(PLACEHOLDER_ALIASES.get(name, name), "")

    filled = re.sub(r"\{\{\s*([A-Za-z_]+)\s*\}\}", fill, template)
    return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in filled.split("\n")).strip()


_TEMPLATE_PIECES = st.sampled_from(
    [
        "Hi ",
        "{{first_name}}",
        "{{ FirstName }}",
        "{{lastName}}",
        "{{unknown}}",
        " ",
        "  ",
        "\t",
        "\n",
        "!",
        "{{",
        "}}",
    ]
)


@given(
    st.lists(_TEMPLATE_PIECES, max_size=12).map("".join),
    st.dictionaries(
        st.sampled_from(["first_name", "last_name", "unknown"]), st.text(alphabet=" \tab\n", max_size=5)
    ),
)
def test_the_split_template_renders_as_the_regex_rule(template: str, values: dict[str, str]) -> None:
    assert render(template, values) == _render_by_regex(template, values)
