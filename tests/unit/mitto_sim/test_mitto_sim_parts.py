"""The part counter against the character-by-character rule it replaced, on random texts."""

import math

from hypothesis import given
from hypothesis import strategies as st
from mitto_sim.domain import GSM7_ALL, GSM7_EXTENSION, count_parts, count_parts_of_all


def counted_char_by_char(text: str) -> int:
    chars = set(text)
    if chars <= GSM7_ALL:
        units = len(text) + sum(1 for c in text if c in GSM7_EXTENSION)
        single, multi = 160, 153
    else:
        units = len(text) + sum(1 for c in text if ord(c) > 0xFFFF)
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


# Mostly the basic alphabet, with the characters each branch turns on: extension characters, ASCII
# outside GSM-7 (form feed and tab included), Latin-1 and Greek inside and outside it, astral emoji.
SPICE = "^{}\\[~]|€`\f\t\x00\x7fçéÄΔ\N{GREEK SMALL LETTER ALPHA}Ж😀𝄞"
texts = st.text(alphabet=st.sampled_from(sorted(GSM7_ALL)), max_size=700) | st.text(
    alphabet=st.sampled_from(sorted(GSM7_ALL) + list(SPICE)), max_size=700
)


@given(texts)
def test_parts_equal_the_character_by_character_count(text: str) -> None:
    assert count_parts(text) == counted_char_by_char(text)


@given(st.lists(texts, max_size=20))
def test_parts_of_a_whole_call_equal_each_text_counted_alone(batch: list[str]) -> None:
    assert count_parts_of_all(batch) == [counted_char_by_char(text) for text in batch]


def test_boundaries_of_each_encoding() -> None:
    for text, parts in [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("€" * 80, 1),
        ("^" * 81, 2),
        ("\f" + "a" * 69, 1),  # form feed is not GSM-7 here: UCS-2
        ("\f" + "a" * 70, 2),
        ("😀" * 35, 1),
        ("😀" * 35 + "a", 2),
    ]:
        assert count_parts(text) == counted_char_by_char(text) == parts
        assert count_parts_of_all([text, "Hi"]) == [parts, 1]
