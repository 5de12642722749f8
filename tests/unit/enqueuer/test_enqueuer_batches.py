"""Planned batches: the joined fast path encodes exactly what one recipient at a time would, splits by bytes,
prices per distinct value set, and the COPY text of the audience copy is read back field for field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from enqueuer.batches import BatchText, BatchWriter, CopyRowsEncoder, encode_batch, recipient_json
from enqueuer.pricing import Pricer, TextShape
from enqueuer.store.campaigns import Campaign
from enqueuer.store.runs import PlannedRows
from enqueuer.store.tenants import Tenant

from shared.events import BatchQueued, decode
from shared.sms import compose, segments

AT = datetime(2026, 3, 1, tzinfo=UTC)
BASE = "http://127.0.0.1:8003"
TEMPLATE = "Hi {{first_name}}, sale today"
CAMPAIGN = Campaign(
    "0b7c8d3e-1f2a-4b5c-9d6e-7f8091a2b3c4", "t-1", "Sale", TEMPLATE, None, "marketing", "draft", None
)
TENANT = Tenant("t-1", "Shop", "retail", "GR", "Shop", "active")
NAMES = ['Ada "the" Great', "back\\slash", "tab\there", "line\nbreak", "Ελένη", "😀 emoji", "plain"]


def writer(max_bytes: int = 900_000, template: str = TEMPLATE) -> BatchWriter:
    pricer = Pricer(TextShape(template, marketing=True, has_offer=False, links_base_url=BASE))
    campaign = Campaign(CAMPAIGN.id, "t-1", "Sale", template, None, "marketing", "draft", None)
    return BatchWriter(campaign, TENANT, "run1", pricer, max_bytes, AT)


def rows(count: int, start: int = 0) -> tuple[list[str], list[str], list[str]]:
    ids = [str(1000 + n) for n in range(start, start + count)]
    phones = [f"+30694{n:07d}" for n in range(start, start + count)]
    values = [
        orjson.dumps({"first_name": NAMES[n % len(NAMES)]}).decode() for n in range(start, start + count)
    ]
    return ids, phones, values


def decoded(planned: PlannedRows) -> list[BatchQueued]:
    out = []
    for value in planned.values:
        _, event = decode(value)
        assert isinstance(event, BatchQueued)
        out.append(event)
    return out


def parts(name: str) -> int:
    text = compose(
        TEMPLATE,
        {"first_name": name},
        marketing=True,
        offer_link=None,
        unsubscribe_link=f"{BASE}/u/" + "A" * 28,
    )
    return segments(text).parts


def test_a_joined_batch_is_byte_for_byte_the_batch_of_its_recipients() -> None:
    w = writer()
    ids, phones, values = rows(50)
    w.add_rows(ids, phones, values)
    planned = w.take()
    items = ",".join(recipient_json(i, p, v) for i, p, v in zip(ids, phones, values, strict=True))
    text = BatchText(CAMPAIGN.id, "t-1", TEMPLATE, "marketing", "Shop", None)
    assert planned.values == [encode_batch(text, f"{CAMPAIGN.id}:run1:0", "run1", 0, f"[{items}]", AT)]
    (event,) = decoded(planned)
    assert [(r.id, r.phone, r.values["first_name"]) for r in event.recipients] == [
        (int(i), p, orjson.loads(v)["first_name"]) for i, p, v in zip(ids, phones, values, strict=True)
    ]
    assert planned.batches == [(f"{CAMPAIGN.id}:run1:0", 0, 50, w.cost, "{" + ",".join(ids) + "}")]
    assert w.cost == sum(parts(orjson.loads(v)["first_name"]) for v in values)


def test_a_batch_over_the_byte_limit_is_split_in_order_by_bytes_not_characters() -> None:
    w = writer(max_bytes=2_000)
    ids = [str(n) for n in range(40)]
    phones = [f"+30694{n:07d}" for n in range(40)]
    values = [orjson.dumps({"first_name": "Ελένη" * 8}).decode()] * 40
    w.add_rows(ids, phones, values)
    planned = w.take()
    events = decoded(planned)
    assert len(events) > 2
    for value, event in zip(planned.values, events, strict=True):
        recipients = orjson.dumps(orjson.loads(value)["payload"]["recipients"])
        assert len(recipients) <= 2_000  # bytes of UTF-8: 16 Greek letters are 80 characters, 160 bytes
        assert event.recipients
    assert [r.id for e in events for r in e.recipients] == list(range(40))
    assert [b[1] for b in planned.batches] == list(range(len(events)))
    assert sum(b[2] for b in planned.batches) == 40
    assert sum(b[3] for b in planned.batches) == w.cost == 40 * parts("Ελένη" * 8)
    assert w.batches == len(events)
    assert w.recipients == 40


def test_a_text_without_placeholders_is_priced_once_per_batch() -> None:
    w = writer(template="Sale today, everything must go")
    w.add_rows(*rows(30))
    assert w.cost == 30 * w.pricer.fixed  # type: ignore[operator]


def copy_text(ids: list[str], phones: list[str], values: list[str]) -> str:
    """What PostgreSQL's COPY TO (text) prints for these rows: backslashes doubled, a newline after each."""
    return "".join(
        f"{i}\t{CAMPAIGN.id}\t{p}\t{v.replace(chr(92), chr(92) * 2)}\n"
        for i, p, v in zip(ids, phones, values, strict=True)
    )


@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 11], list(range(1, 23))])
def test_copied_rows_are_read_back_field_for_field_wherever_the_chunks_end(cuts: list[int]) -> None:
    ids, phones, values = rows(23)
    encoded: list[PlannedRows] = []

    class Spool:
        def add(self, planned: PlannedRows) -> None:
            encoded.append(planned)

    w = writer()
    encoder = CopyRowsEncoder(w, Spool(), batch_size=5)  # type: ignore[arg-type]
    lines = copy_text(ids, phones, values).splitlines(keepends=True)
    for start, end in zip([0, *cuts], [*cuts, len(lines)], strict=True):
        if end > start:
            encoder("".join(lines[start:end]))
    encoder.finish()
    events = [e for planned in encoded for e in decoded(planned)]
    assert [len(e.recipients) for e in events] == [5, 5, 5, 5, 3]
    got: list[tuple[Any, ...]] = [(r.id, r.phone, r.values) for e in events for r in e.recipients]
    assert got == [(int(i), p, orjson.loads(v)) for i, p, v in zip(ids, phones, values, strict=True)]
