"""The sender's fast composer must produce exactly the enqueuer's texts (what was priced is what is sent)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sender.texts import BatchTexts

from shared.links import LinkSettings, link_url, make_token
from shared.sms import compose, parts, segments

LINKS = LinkSettings(base_url="https://go.example.com/", secret="a-test-secret")

names = st.sampled_from(
    ["first_name", "firstName", "FIRST_NAME", "lastname", "last_name", "email", "discount_code", "unknown"]
)
chunks = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
    st.sampled_from([" ", "  ", "\t", "\n", " \n ", "{{", "}}", "€", "ü", "😀", "\r"]),
    names.map(lambda n: "{{" + n + "}}"),
    names.map(lambda n: "{{ " + n + " }}"),
)
templates = st.lists(chunks, max_size=8).map("".join)
values = st.dictionaries(
    st.sampled_from(["first_name", "last_name", "email", "discount_code"]),
    st.text(max_size=10) | st.sampled_from(["", " ", "Ada  ", "\tB", "Zoë", "€uro"]),
)


def reference_text(template: str, vals: dict[str, str], rid: int, marketing: bool, offer: bool) -> str:
    return compose(
        template,
        vals,
        marketing=marketing,
        offer_link=link_url(LINKS.base_url, "offer", make_token(LINKS.secret, "offer", rid))
        if marketing and offer
        else None,
        unsubscribe_link=link_url(LINKS.base_url, "unsubscribe", make_token(LINKS.secret, "unsubscribe", rid))
        if marketing
        else None,
    )


@settings(max_examples=400, deadline=None)
@given(templates, values, st.integers(0, 2**63 - 1), st.booleans(), st.booleans())
def test_composed_text_equals_the_shared_composition(
    template: str, vals: dict[str, str], rid: int, marketing: bool, offer: bool
) -> None:
    fast = BatchTexts(template, marketing=marketing, with_offer=offer, links=LINKS)
    expected = reference_text(template, vals, rid, marketing, offer)
    assert fast.text(rid, vals) == expected
    assert fast.text_and_parts(rid, vals) == (expected, segments(expected).parts)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400) | templates)
def test_part_count_equals_the_shared_segment_count(text: str) -> None:
    assert parts(text) == segments(text).parts


def test_part_count_boundaries_of_both_encodings() -> None:
    assert [parts("a" * n) for n in (0, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [parts("€" * n) for n in (80, 81)] == [1, 2]  # extension characters take two septets
    assert [parts("ά" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]


def test_service_messages_get_no_links() -> None:
    fast = BatchTexts("Your code is {{discount_code}}", marketing=False, with_offer=True, links=LINKS)
    assert fast.text(7, {"discount_code": "X1"}) == "Your code is X1"


def test_marketing_message_carries_offer_and_unsubscribe_links_of_its_recipient() -> None:
    fast = BatchTexts("Hi {{First_Name}}!", marketing=True, with_offer=True, links=LINKS)
    text = fast.text(42, {"first_name": "Ada"})
    lines = text.split("\n")
    assert lines[0] == "Hi Ada!"
    assert lines[1] == f"Claim Offer: https://go.example.com/l/{make_token(LINKS.secret, 'offer', 42)}"
    assert (
        lines[2]
        == f"To unsubscribe, tap: https://go.example.com/u/{make_token(LINKS.secret, 'unsubscribe', 42)}"
    )


@pytest.mark.parametrize(
    "secret", ["short-secret", "k" * 64, "a much longer secret than one SHA-256 block " * 3]
)
def test_tokens_equal_the_shared_ones_for_any_key_length(secret: str) -> None:
    links = LinkSettings(base_url="https://l.example", secret=secret)
    fast = BatchTexts("x", marketing=True, with_offer=True, links=links)
    for rid in (0, 1, 2**40 + 7, 2**63 - 1):
        assert fast.text(rid, {}) == (
            f"x\nClaim Offer: https://l.example/l/{make_token(secret, 'offer', rid)}"
            f"\nTo unsubscribe, tap: https://l.example/u/{make_token(secret, 'unsubscribe', rid)}"
        )


@settings(max_examples=200, deadline=None)
@given(templates, values, st.booleans())
def test_part_count_is_right_when_the_links_themselves_are_not_gsm7(
    template: str, vals: dict[str, str], offer: bool
) -> None:
    links = LinkSettings(base_url="https://κλικ.example", secret="a-test-secret")
    fast = BatchTexts(template, marketing=True, with_offer=offer, links=links)
    text, count = fast.text_and_parts(99, vals)
    assert count == segments(text).parts
