"""From a request body to per-item results and the columns of the accepted items.

This is the hot path (tens of thousands of items a second): plain dicts from orjson, `type(x) is str`
checks, no model per item.
"""

from typing import Any

import orjson

from mitto_sim.domain import MessageIds, judge_item
from mitto_sim.store import NewMessages


class MalformedRequest(ValueError):
    """The body is not JSON of the expected shape; the whole call is refused and nothing is stored."""


def parse_bulk(body: bytes, max_items: int) -> list[Any]:
    payload = _loads(body)
    messages = payload.get("messages") if type(payload) is dict else None
    if type(messages) is not list or not messages:
        raise MalformedRequest("body must be an object with a non-empty array 'messages'")
    if len(messages) > max_items:
        raise MalformedRequest(f"at most {max_items} messages per call")
    return messages


def parse_single(body: bytes) -> list[Any]:
    return [_loads(body)]


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"invalid JSON: {exc}") from exc


def judge_items(
    items: list[Any], modulus: int, first_counter: int, ids: MessageIds
) -> tuple[list[dict[str, str]], NewMessages]:
    """Per-item results in request order, and the accepted items to store.

    Accepted items get ids from `first_counter` on, in order; the caller must store the batch before
    anything else takes a counter.
    """
    results: list[dict[str, str]] = []
    rows: list[tuple[str, int, str, str, str | None, int]] = []
    encode = ids.encode
    counter = first_counter
    for position, item in enumerate(items):
        try:
            account = item["trafficAccountId"]
            destination = item["destination"]
            sms = item["sms"]
            text = sms["text"]
            sender = sms.get("sender") or ""  # missing or null: judged as an invalid sender
            reference = item.get("reference")
        except (KeyError, TypeError, AttributeError):
            raise MalformedRequest(_shape_error(position)) from None
        if (
            type(account) is not str
            or type(destination) is not str
            or type(text) is not str
            or type(sender) is not str
            or (reference is not None and type(reference) is not str)
        ):
            raise MalformedRequest(_shape_error(position))
        reason, digits, parts = judge_item(destination, text, sender, modulus)
        if reason is not None:
            results.append({"trafficAccountId": account, "error": reason})
            continue
        results.append({"trafficAccountId": account, "messageId": encode(counter)})
        counter += 1
        rows.append((account, digits, text, sender, reference, parts))
    columns = tuple(zip(*rows, strict=True)) if rows else ((),) * 6
    return results, NewMessages(*columns)


def _shape_error(position: int) -> str:
    return (
        f"messages[{position}] must be an object with string 'trafficAccountId', 'destination', "
        "'sms': {'text', 'sender'} and optional string 'reference'"
    )
