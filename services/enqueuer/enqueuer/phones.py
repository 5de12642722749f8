"""Phone numbers to E.164, with a fast path for input that already is E.164.

`phonenumbers.parse` plus `is_valid_number` cost ~25 µs a number, most of it in generic parsing and in
looking up regular expressions by their text. An import of exported contacts is mostly `+<digits>`; for
those the answer only needs the calling code, the national prefix rule (does parsing strip anything?) and
the region's number patterns, which are compiled here once per calling code. Anything the fast path cannot
decide exactly as phonenumbers would (a national prefix that might be stripped, an unknown calling code,
other characters) goes through phonenumbers itself. A property test holds the two to the same answers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata

E164_SHAPE = re.compile(r"\+[1-9][0-9]{2,19}")  # ASCII digits only: phonenumbers reads other digits too
REGION_NON_GEO = "001"
MIN_NSN, MAX_NSN = 2, 17  # phonenumbers' bounds on a national significant number


class InvalidPhone(ValueError):
    """Not a phone number, or not a valid one for its country (the message says which)."""


def normalise(raw: str, region: str) -> str:
    """E.164 form of `raw`, read in `region` when it has no country code; InvalidPhone when invalid."""
    text = raw.strip()
    if E164_SHAPE.fullmatch(text):
        answer = e164_fast(text)
        if answer is not None:
            if not answer:
                raise InvalidPhone("not a valid phone number for its country")
            return text
    return e164_full(text, region)


def e164_full(text: str, region: str) -> str:
    """phonenumbers' own answer."""
    try:
        number = phonenumbers.parse(text, region.upper())
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number for its country")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def e164_fast(text: str) -> bool | None:
    """For `+<digits>`: True when phonenumbers would parse it to exactly `text` and call it valid, False
    when it would parse it to exactly `text` and call it invalid, None when only phonenumbers can tell."""
    digits = text[1:]
    for size in (1, 2, 3):  # the shortest known calling code wins, as in phonenumbers
        code = int(digits[:size])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    nsn = digits[size:]
    if not MIN_NSN <= len(nsn) <= MAX_NSN:
        return None
    rules = calling_code_rules(code)
    if rules.national_prefix is not None and rules.national_prefix.match(nsn):
        return None  # parsing may strip it: the E.164 form could differ from the input
    region = rules.region_of(nsn)
    return region is not None and region.valid(nsn)


Matcher = Callable[[str], re.Match[str] | None]


@dataclass(frozen=True)
class RegionRules:
    """A region's number patterns, pre-combined per national number length: the general pattern, and one
    alternation of every type's pattern that allows that length (valid = the general pattern and any type
    match, which is phonenumbers' `_number_type_helper(...) != UNKNOWN`)."""

    code: str
    leading_digits: re.Pattern[str] | None
    by_length: dict[int, tuple[Matcher, Matcher]]  # lengths for which both exist
    own_code: bool  # the region's metadata has the calling code it is listed under

    def known_type(self, nsn: str) -> bool:
        checks = self.by_length.get(len(nsn))
        return checks is not None and checks[0](nsn) is not None and checks[1](nsn) is not None

    def valid(self, nsn: str) -> bool:
        """phonenumbers' `is_valid_number_for_region` for a number of the region's listed calling code."""
        return self.own_code and self.known_type(nsn)


@dataclass(frozen=True)
class CallingCodeRules:
    national_prefix: re.Pattern[str] | None  # national_prefix_for_parsing of the code's main region
    regions: tuple[RegionRules | None, ...]  # None: a region phonenumbers has no metadata for

    def region_of(self, nsn: str) -> RegionRules | None:
        """phonenumbers' `region_code_for_number` (None: none, or one without metadata)."""
        if len(self.regions) == 1:
            return self.regions[0]
        for region in self.regions:
            if region is None:
                continue
            if region.leading_digits is not None:
                if region.leading_digits.match(nsn):
                    return region
            elif region.known_type(nsn):
                return region
        return None


@functools.cache
def calling_code_rules(code: int) -> CallingCodeRules:
    """Compiled once per calling code (memoised: the metadata never changes while the process runs)."""
    regions: tuple[str, ...] = COUNTRY_CODE_TO_REGION_CODE[code]
    main = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
    prefix = main.national_prefix_for_parsing if main is not None else None
    return CallingCodeRules(
        re.compile(prefix) if prefix else None,
        tuple(_region_rules(code, r, single=len(regions) == 1) for r in regions),
    )


def _region_rules(code: int, region: str, *, single: bool) -> RegionRules | None:
    if region == REGION_NON_GEO:
        metadata = PhoneMetadata.metadata_for_nongeo_region(code, None)
    else:
        metadata = PhoneMetadata.metadata_for_region(region, None)
    if metadata is None:
        return None
    types = [
        metadata.fixed_line,
        metadata.premium_rate,
        metadata.toll_free,
        metadata.shared_cost,
        metadata.voip,
        metadata.personal_number,
        metadata.pager,
        metadata.uan,
        metadata.voicemail,
    ]
    if not metadata.same_mobile_and_fixed_line_pattern:
        types.insert(0, metadata.mobile)
    by_length: dict[int, tuple[Matcher, Matcher]] = {}
    general = _pattern_for(metadata.general_desc)
    for length in range(MIN_NSN, MAX_NSN + 1):
        if not _allows(metadata.general_desc, length) or general is None:
            continue
        alternatives = [p for t in types if _allows(t, length) and (p := _pattern_for(t)) is not None]
        if alternatives:
            combined = "|".join(f"(?:{p})" for p in alternatives)
            by_length[length] = (re.compile(general).fullmatch, re.compile(combined).fullmatch)
    leading = metadata.leading_digits if not single else None  # only used to choose among regions
    return RegionRules(
        region,
        re.compile(leading) if leading is not None else None,
        by_length,
        region == REGION_NON_GEO or metadata.country_code == code,
    )


def _allows(desc: phonenumbers.PhoneNumberDesc | None, length: int) -> bool:
    """phonenumbers' length test in `_is_number_matching_desc` (no possible lengths: any length)."""
    return desc is not None and (not desc.possible_length or length in desc.possible_length)


def _pattern_for(desc: phonenumbers.PhoneNumberDesc | None) -> str | None:
    return desc.national_number_pattern or None if desc is not None else None
