"""Judging a whole call at once gives what judging item by item gave: results, stored columns, errors."""

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitto_sim.domain import MessageIds, judge_item
from mitto_sim.intake import MalformedRequest, judge_items

IDS = MessageIds(start_ms=1_765_000_000_000, nonce=77)
SHAPE = "must be an object with string"


def judged_one_by_one(items: list[Any], modulus: int, first_counter: int) -> tuple[list[Any], list[Any]]:
    """The item-by-item judgement: (per-item result dicts, accepted rows); raises like judge_items."""
    results: list[Any] = []
    rows: list[Any] = []
    counter = first_counter
    for position, item in enumerate(items):
        try:
            account, destination, sms = item["trafficAccountId"], item["destination"], item["sms"]
            text, sender, reference = sms["text"], sms.get("sender") or "", item.get("reference")
        except (KeyError, TypeError, AttributeError):
            raise MalformedRequest(f"messages[{position}] {SHAPE}") from None
        if any(type(v) is not str for v in (account, destination, text, sender)) or (
            reference is not None and type(reference) is not str
        ):
            raise MalformedRequest(f"messages[{position}] {SHAPE}")
        reason, digits, parts = judge_item(destination, text, sender, modulus)
        if reason is not None:
            results.append({"trafficAccountId": account, "error": reason})
            continue
        results.append({"trafficAccountId": account, "messageId": IDS.encode(counter)})
        counter += 1
        rows.append((account, digits, text, sender, reference, parts))
    return results, rows


def an_item(n: int, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "trafficAccountId": "acc",
        "destination": f"+3069{n:08d}",
        "sms": {"text": f"Hi Guest{n}, 20% off! https://127.0.0.1:8003/l/{n:028d}", "sender": "Shop"},
        "reference": f"camp:{n}",
    }
    item.update(fields)
    return item


# Variations an item may take: each changes its verdict or makes the call malformed.
ODD_ITEMS = [
    {"destination": "+3069"},
    {"destination": "306912345678"},
    {"destination": "+0306912345"},
    {"destination": "+३०६९१२३४५६७"},
    {"destination": "+306912345678\n+306912345679"},
    {"destination": 306912345678},
    {"sms": {"text": "", "sender": "Shop"}},
    {"sms": {"text": "Hi", "sender": "TwelveLetter"}},
    {"sms": {"text": "Hi", "sender": None}},
    {"sms": {"text": "Hi"}},
    {"sms": {"text": "Καλημέρα 😀", "sender": "Shop"}},
    {"sms": {"text": "a" * 400 + "€", "sender": "12345"}},
    {"sms": {"text": 5, "sender": "Shop"}},
    {"sms": "Hi"},
    {"sms": {"sender": "Shop"}},
    {"reference": None},
    {"reference": 7},
    {"trafficAccountId": "acc-2"},
    {"trafficAccountId": None},
]


@st.composite
def calls(draw: st.DrawFn) -> list[Any]:
    count = draw(st.integers(min_value=1, max_value=40))
    items: list[Any] = []
    for n in range(count):
        kind = draw(st.integers(min_value=-3, max_value=len(ODD_ITEMS) + 1))
        if kind < 0:
            items.append(an_item(n))
        elif kind < len(ODD_ITEMS):
            items.append(an_item(n, **ODD_ITEMS[kind]))
        elif kind == len(ODD_ITEMS):
            items.append({k: v for k, v in an_item(n).items() if k != "trafficAccountId"})
        else:
            items.append(draw(st.sampled_from(["text", None, 3, [an_item(n)]])))
    return items


@settings(max_examples=300)
@given(calls(), st.sampled_from([0, 2, 3, 100]), st.integers(min_value=0, max_value=2**20))
def test_a_whole_call_is_judged_as_item_by_item(items: list[Any], modulus: int, first_counter: int) -> None:
    try:
        expected, rows = judged_one_by_one(items, modulus, first_counter)
    except MalformedRequest as exc:
        named = str(exc).removesuffix(SHAPE)
        with pytest.raises(MalformedRequest, match=re.escape(named)):
            judge_items(items, modulus, first_counter, IDS)
        return
    results, batch = judge_items(items, modulus, first_counter, IDS)
    assert results.as_dicts() == expected
    assert results.json() == orjson.dumps(expected)
    columns = (batch.accounts, batch.destinations, batch.texts, batch.senders, batch.references, batch.parts)
    assert list(zip(*columns, strict=True)) == rows


def test_a_call_of_valid_items_is_accepted_but_for_the_rejection_rule() -> None:
    items = [an_item(n) for n in range(1_000)]
    results, batch = judge_items(items, 100, 5, IDS)
    expected, rows = judged_one_by_one(items, 100, 5)
    assert results.as_dicts() == expected
    assert results.json() == orjson.dumps(expected)
    assert len(batch.destinations) == len(rows) == 990
    assert list(batch.destinations) == [row[1] for row in rows]


def test_the_first_malformed_item_is_named() -> None:
    items = [an_item(0), an_item(1, sms={"text": 1}), {"destination": "+306900000000"}]
    with pytest.raises(MalformedRequest, match=r"messages\[1\]"):
        judge_items(items, 0, 0, IDS)


def test_ids_of_a_run_equal_ids_one_by_one() -> None:
    for first, count in [(0, 1), (1020, 10), (2**30 - 3, 2050), (2**40 - 5, 5), (7, 0)]:
        assert IDS.encode_run(first, count) == [IDS.encode(c) for c in range(first, first + count)]
