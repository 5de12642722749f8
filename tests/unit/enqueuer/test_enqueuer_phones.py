"""The fast E.164 path gives phonenumbers' own answers: same E.164 text, or the same refusal."""

from __future__ import annotations

import phonenumbers
import pytest
from enqueuer.phones import InvalidPhone, e164_fast, e164_full, normalise
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumberFormat, PhoneNumberType

CODES = sorted(COUNTRY_CODE_TO_REGION_CODE)
TENANT_REGIONS = ["GR", "US", "GB", "IT", "DE", "AR", "BR", "IN", "FR", "CY"]


def answer(fn: object, text: str, region: str) -> str:
    try:
        return str(fn(text, region))  # type: ignore[operator]
    except InvalidPhone as exc:
        return f"refused: {exc}"


def assert_same(text: str, region: str) -> None:
    assert answer(normalise, text, region) == answer(e164_full, text, region), text


def example_numbers() -> list[str]:
    """Every region's example number of every type, in E.164 (valid by construction)."""
    out: list[str] = []
    regions = sorted(phonenumbers.SUPPORTED_REGIONS)
    for region in regions:
        for kind in (
            PhoneNumberType.FIXED_LINE,
            PhoneNumberType.MOBILE,
            PhoneNumberType.TOLL_FREE,
            PhoneNumberType.PREMIUM_RATE,
            PhoneNumberType.VOIP,
            PhoneNumberType.UAN,
        ):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                out.append(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        number = phonenumbers.example_number_for_non_geo_entity(code)
        if number is not None:
            out.append(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    return sorted(set(out))


EXAMPLES = example_numbers()


def variants(text: str) -> list[str]:
    """The number, and the near misses an import sees: a digit changed, added or dropped, a trunk 0 or 1
    kept after the country code, surrounding spaces."""
    digits = text[1:]
    out = [text, f" {text} ", text + "0", text[:-1], "+" + digits[:-1] + str((int(digits[-1]) + 1) % 10)]
    for size in (1, 2, 3):
        out += [f"+{digits[:size]}0{digits[size:]}", f"+{digits[:size]}1{digits[size:]}"]
    return out


def test_examples_of_every_region_and_their_near_misses_get_phonenumbers_answers() -> None:
    assert len(EXAMPLES) > 500
    for text in EXAMPLES:
        for variant in variants(text):
            assert_same(variant, "GR")


def test_the_fast_path_decides_most_e164_numbers_itself() -> None:
    decided = sum(e164_fast(text) is not None for text in EXAMPLES)
    assert decided / len(EXAMPLES) > 0.8
    assert e164_fast("+306940000001") is True
    assert e164_fast("+30694000000") is False  # one digit short: phonenumbers parses it, and refuses it


@settings(max_examples=2000, deadline=None)
@given(
    code=st.sampled_from(CODES),
    rest=st.text(alphabet="0123456789", min_size=0, max_size=18),
    region=st.sampled_from(TENANT_REGIONS),
)
def test_random_plus_numbers_get_phonenumbers_answers(code: int, rest: str, region: str) -> None:
    assert_same(f"+{code}{rest}", region)


@settings(max_examples=600, deadline=None)
@given(text=st.from_regex(r"\+[0-9]{0,21}", fullmatch=True), region=st.sampled_from(TENANT_REGIONS))
def test_any_plus_and_digits_get_phonenumbers_answers(text: str, region: str) -> None:
    assert_same(text, region)


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+30 694 000 0001", "GR", "+306940000001"),  # not E.164 as typed: phonenumbers reads it
        ("6940000001", "GR", "+306940000001"),
        ("+306940000001", "US", "+306940000001"),  # a country code wins over the tenant's region
        ("+٣٠٦٩٤٠٠٠٠٠٠١", "GR", "+306940000001"),  # Arabic-Indic digits: left to phonenumbers
        ("+390612345678", "IT", "+390612345678"),  # Italian leading zero kept
    ],
)
def test_other_spellings_go_through_phonenumbers(text: str, region: str, expected: str) -> None:
    assert normalise(text, region) == expected
    assert_same(text, region)


@pytest.mark.parametrize("text", ["+0306940000001", "+", "+12", "+999123456789", "+3069400000011234567890"])
def test_impossible_numbers_are_refused_with_phonenumbers_reason(text: str) -> None:
    with pytest.raises(InvalidPhone):
        normalise(text, "GR")
    assert_same(text, "GR")
