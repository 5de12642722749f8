from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.links import TOKEN_LENGTH, link_url, make_token, read_token

SECRET = "a-test-secret"


@given(st.integers(min_value=1, max_value=2**63 - 1), st.sampled_from(["offer", "unsubscribe"]))
def test_a_token_names_its_recipient_and_kind_and_has_a_fixed_length(recipient: int, kind: str) -> None:
    token = make_token(SECRET, kind, recipient)  # type: ignore[arg-type]
    assert len(token) == TOKEN_LENGTH
    assert read_token(SECRET, token) == (kind, recipient)


def test_a_token_from_another_secret_or_altered_is_refused() -> None:
    token = make_token(SECRET, "unsubscribe", 42)
    assert read_token("another-secret", token) is None
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert read_token(SECRET, flipped) is None
    assert read_token(SECRET, token[:-1]) is None
    assert read_token(SECRET, "!" * TOKEN_LENGTH) is None


@given(st.text(max_size=40))
def test_random_strings_are_never_accepted(text: str) -> None:
    assert read_token(SECRET, text) is None


def test_links_point_at_the_redirect_and_unsubscribe_routes() -> None:
    assert link_url("https://go.example/", "offer", "T") == "https://go.example/l/T"
    assert link_url("https://go.example", "unsubscribe", "T") == "https://go.example/u/T"
