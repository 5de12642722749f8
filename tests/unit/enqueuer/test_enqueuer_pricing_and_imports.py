"""Pricing of final texts, the pre-encoded BatchQueued, and the streamed import readers and row rules."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from enqueuer.batches import BatchText, encode_batch, recipient_json
from enqueuer.importing import CsvReader, ImportFormatError, JsonReader, parse_row
from enqueuer.pricing import Pricer, TextShape
from hypothesis import given
from hypothesis import strategies as st

from shared.events import BatchQueued, BatchRecipient, MessageType, decode
from shared.links import link_url, make_token
from shared.sms import compose, segments

BASE = "http://127.0.0.1:8003"


def real_parts(template: str, values: dict[str, str], *, offer: bool, rid: int = 123456) -> int:
    """What the sender will send, with the real per-recipient tokens."""
    text = compose(
        template,
        values,
        marketing=True,
        offer_link=link_url(BASE, "offer", make_token("s3cret-key", "offer", rid)) if offer else None,
        unsubscribe_link=link_url(BASE, "unsubscribe", make_token("s3cret-key", "unsubscribe", rid)),
    )
    return segments(text).parts


@pytest.mark.parametrize(
    ("template", "values", "offer"),
    [
        ("Hi!", {}, False),
        ("x" * 100, {}, True),  # GSM-7 past 160 with the links: several 153-character parts
        ("Γεια σου {{first_name}}", {"first_name": "Ελένη"}, False),  # noqa: RUF001  UCS-2
        (
            "Hi {{first_name}} {{LastName}}, {{city}} {}[]~",
            {"first_name": "Ada", "last_name": "L", "city": "Rome"},
            True,
        ),
    ],
)
def test_the_price_is_the_part_count_of_the_text_the_sender_sends(
    template: str, values: dict[str, str], offer: bool
) -> None:
    pricer = Pricer(TextShape(template, marketing=True, has_offer=offer, links_base_url=BASE))
    assert pricer.parts_for_json(orjson.dumps(values).decode()) == real_parts(template, values, offer=offer)


@given(
    st.sampled_from(
        ["Hi {{first_name}}!", "{{first_name}} {{last_name}}: " + "x" * 120, "Γεια {{first_name}}"]
    ),
    st.dictionaries(
        st.sampled_from(["first_name", "last_name"]),
        st.text(alphabet="aZ €[ \tά😀", max_size=90),
    ),
    st.booleans(),
    st.booleans(),
)
def test_any_values_are_priced_as_the_composed_text(
    template: str, values: dict[str, str], marketing: bool, offer: bool
) -> None:
    """The body is scanned alone and the links' part counted once: the sum must be the whole text's."""
    pricer = Pricer(TextShape(template, marketing=marketing, has_offer=offer, links_base_url=BASE))
    if marketing:
        expected = real_parts(template, values, offer=offer)
    else:
        expected = segments(
            compose(template, values, marketing=False, offer_link=None, unsubscribe_link=None)
        ).parts
    assert pricer.parts_for_json(orjson.dumps(values).decode()) == expected


def test_placeholders_change_the_price_and_fixed_texts_are_priced_once() -> None:
    pricer = Pricer(
        TextShape("Hi {{first_name}}" + "!" * 30, marketing=True, has_offer=False, links_base_url=BASE)
    )
    assert pricer.fixed is None
    short = pricer.parts_for_json('{"first_name": "Al"}')
    long = pricer.parts_for_json(orjson.dumps({"first_name": "A" * 120}).decode())
    assert long > short
    fixed = Pricer(TextShape("Hello", marketing=False, has_offer=False, links_base_url=BASE))
    assert fixed.fixed == 1
    assert fixed.final_text({}) == "Hello"  # service messages get no links


def test_a_pre_encoded_batch_decodes_to_the_same_event() -> None:
    text = BatchText("c-1", "t-1", "Hi {{first_name}}", "marketing", "Shop", "https://shop.example/sale")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    raw = encode_batch(
        text,
        "c-1:r:0",
        "r",
        0,
        "["
        + ",".join(
            [
                recipient_json(7, "+306940000001", '{"first_name": "Ada"}'),
                recipient_json(8, "+306940000002", "{}"),
            ]
        )
        + "]",
        at,
    )
    envelope, event = decode(raw)
    assert envelope.campaign_id == "c-1"
    assert event == BatchQueued(
        batch_id="c-1:r:0",
        run_token="r",
        batch_no=0,
        sender_id="Shop",
        template="Hi {{first_name}}",
        message_type=MessageType.MARKETING,
        recipients=(
            BatchRecipient(id=7, phone="+306940000001", values={"first_name": "Ada"}),
            BatchRecipient(id=8, phone="+306940000002"),
        ),
        offer_url="https://shop.example/sale",
    )


def feed_all(reader: CsvReader | JsonReader, data: bytes, size: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i in range(0, len(data), size):
        rows += list(reader.feed(data[i : i + size]))
    return rows + list(reader.finish())


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_csv_rows_survive_any_chunking_with_quoted_newlines_and_utf8(size: int) -> None:
    data = '\ufeffphone,first_name,note\n6940000001,Ελένη,"two\nlines, and ""quotes"""\n6940000002,Bob,\n'.encode()
    rows = feed_all(CsvReader(), data, size)
    assert rows == [
        {"phone": "6940000001", "first_name": "Ελένη", "note": 'two\nlines, and "quotes"'},
        {"phone": "6940000002", "first_name": "Bob", "note": ""},
    ]


@pytest.mark.parametrize("size", [1, 5, 64, 10_000])
@pytest.mark.parametrize("shape", ["array", "ndjson"])
def test_json_rows_survive_any_chunking(size: int, shape: str) -> None:
    rows = [{"phone": "6940000001", "name": "Ελένη"}, {"phone": "6940000002", "n": 12}]
    data = orjson.dumps(rows) if shape == "array" else b"\n".join(orjson.dumps(r) for r in rows) + b"\n"
    assert feed_all(JsonReader(), data, size) == rows


@pytest.mark.parametrize("data", [b"name\nA\n", b'phone\n"open quote\n'])
def test_unreadable_csv_is_refused(data: bytes) -> None:
    with pytest.raises(ImportFormatError):
        feed_all(CsvReader(), data, 4)


@pytest.mark.parametrize("data", [b'[{"phone": 1}', b"[1, 2]", b'{"phone": "x"} garbage', b""])
def test_unreadable_json_is_refused(data: bytes) -> None:
    with pytest.raises(ImportFormatError):
        feed_all(JsonReader(), data, 4)


def test_a_row_becomes_a_contact_or_a_reason() -> None:
    row = parse_row(
        {
            "Phone Number": "694 000 0001",
            "First Name": " Ada ",
            "E-mail": "a@b.co",
            "Tags": "VIP; new",
            "City": "Rome",
            "Consent": "yes",
        },
        "GR",
    )
    assert (row.phone, row.first_name, row.email, row.tags, row.attributes, row.consent) == (
        "+306940000001",
        "Ada",
        "a@b.co",
        ("vip", "new"),
        {"city": "Rome"},
        "granted",
    )
    assert parse_row({"phone": "6940000001"}, "GR").consent is None
    for bad, reason in [
        ({"first_name": "x"}, "no phone"),
        ({"phone": "12"}, "not a valid phone"),
        ({"phone": "6940000001", "email": "nope"}, "invalid email"),
        ({"phone": "6940000001", "consent": "maybe"}, "consent"),
        ({"phone": "6940000001", "9lives": "x"}, "attribute name"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_row(bad, "GR")
