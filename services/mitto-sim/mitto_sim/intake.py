"""From a request body to per-item results and the columns of the accepted items.

This is the hot path (tens of thousands of items a second): plain dicts from orjson, each field of a whole
call pulled out by one comprehension and checked by a scan in C. Only a call with a malformed, invalid or
unusual item is judged item by item.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from types import NoneType
from typing import Any

import orjson

from mitto_sim.domain import (
    DESTINATION_REJECTED,
    MessageIds,
    count_parts_of_all,
    is_valid_sender,
    judge_item,
)
from mitto_sim.store import NewMessages

# `parse_e164`'s rule for every destination of a call at once, joined by newlines.
_E164_LINES = re.compile(r"(?:\+[1-9][0-9]{7,14}\n)*\+[1-9][0-9]{7,14}")


class MalformedRequest(ValueError):
    """The body is not JSON of the expected shape; the whole call is refused and nothing is stored."""


@dataclass(frozen=True, slots=True)
class Results:
    """Per-item results of one call, in request order: `reasons[i]` is None for an accepted item (then the
    next of `message_ids`), else why it was rejected; `reasons` is None when every item was accepted."""

    accounts: Sequence[str]
    reasons: Sequence[str | None] | None
    message_ids: Sequence[str]

    def __len__(self) -> int:
        return len(self.accounts)

    def as_dicts(self) -> list[dict[str, str]]:
        ids = iter(self.message_ids)
        reasons = self.reasons or [None] * len(self.accounts)
        return [
            {"trafficAccountId": account, "messageId": next(ids)}
            if reason is None
            else {"trafficAccountId": account, "error": reason}
            for account, reason in zip(self.accounts, reasons, strict=True)
        ]

    def json(self) -> bytes:
        """`orjson.dumps(self.as_dicts())`, byte for byte, joined from pieces rather than built per item."""
        accounts = self.accounts
        if not accounts:
            return b"[]"
        account = accounts[0]
        if accounts.count(account) != len(accounts):
            return orjson.dumps(self.as_dicts())
        head = '{"trafficAccountId":' + orjson.dumps(account).decode() + ","
        accepted_head, tail = head + '"messageId":"', '"}'
        between = tail + "," + accepted_head
        if self.reasons is None:
            return ("[" + accepted_head + between.join(self.message_ids) + tail + "]").encode()
        # Runs of accepted items between rejected ones: one join per run.
        pieces: list[str] = []
        ids, start, run = self.message_ids, 0, 0
        for reason in self.reasons:
            if reason is None:
                run += 1
                continue
            if run:
                pieces.append(accepted_head + between.join(ids[start : start + run]) + tail)
                start, run = start + run, 0
            pieces.append(head + '"error":"' + reason + '"}')
        if run:
            pieces.append(accepted_head + between.join(ids[start : start + run]) + tail)
        return ("[" + ",".join(pieces) + "]").encode()


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
) -> tuple[Results, NewMessages]:
    """Per-item results in request order, and the accepted items to store.

    Accepted items get ids from `first_counter` on, in order; the caller must store the batch before
    anything else takes a counter. Raises MalformedRequest naming the first malformed item.
    """
    try:
        accounts = [item["trafficAccountId"] for item in items]
        destinations = [item["destination"] for item in items]
        smses = [item["sms"] for item in items]
        texts = [sms["text"] for sms in smses]
        senders = [sms.get("sender") or "" for sms in smses]  # missing or null: judged as an invalid sender
        references = [item.get("reference") for item in items]
    except (KeyError, TypeError, AttributeError):
        raise MalformedRequest(_shape_error(_first_malformed(items))) from None
    str_only = {str}
    if not (
        set(map(type, accounts)) <= str_only
        and set(map(type, destinations)) <= str_only
        and set(map(type, texts)) <= str_only
        and set(map(type, senders)) <= str_only
        and set(map(type, references)) <= {str, NoneType}
    ):
        raise MalformedRequest(_shape_error(_first_malformed(items)))

    joined = "\n".join(destinations)
    if (
        joined.count("\n") == len(destinations) - 1
        and _E164_LINES.fullmatch(joined)
        and all(texts)
        and all(map(is_valid_sender, set(senders)))
    ):
        # The usual call: every item valid, so only the rejection rule can refuse one.
        digits = list(map(int, destinations))  # int() takes the leading "+"
        keep = [number % modulus for number in digits] if modulus else None
        if keep is not None and all(keep):
            keep = None
        reasons = None if keep is None else [None if k else DESTINATION_REJECTED for k in keep]
    else:
        verdicts = list(map(judge_item, destinations, texts, senders, [modulus] * len(items)))
        digits = [digits for _, digits, _ in verdicts]
        keep = [reason is None for reason, _, _ in verdicts]
        reasons = [reason for reason, _, _ in verdicts]
    if keep is not None:
        texts, digits = list(compress(texts, keep)), list(compress(digits, keep))
        kept_accounts = list(compress(accounts, keep))
        senders, references = list(compress(senders, keep)), list(compress(references, keep))
    else:
        kept_accounts = accounts
    message_ids = ids.encode_run(first_counter, len(texts))
    batch = NewMessages(kept_accounts, digits, texts, senders, references, count_parts_of_all(texts))
    return Results(accounts, reasons, message_ids), batch


def _first_malformed(items: list[Any]) -> int:
    """Position of the first item that is not of the expected shape (each is checked as a whole)."""
    for position, item in enumerate(items):
        try:
            sms = item["sms"]
            fields = (item["trafficAccountId"], item["destination"], sms["text"], sms.get("sender") or "")
            reference = item.get("reference")
        except (KeyError, TypeError, AttributeError):
            return position
        if any(type(field) is not str for field in fields) or (
            reference is not None and type(reference) is not str
        ):
            return position
    raise AssertionError("no malformed item")


def _shape_error(position: int) -> str:
    return (
        f"messages[{position}] must be an object with string 'trafficAccountId', 'destination', "
        "'sms': {'text', 'sender'} and optional string 'reference'"
    )
