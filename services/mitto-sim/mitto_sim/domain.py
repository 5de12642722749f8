"""Decisions of the simulator: item checks, the rejection rule, SMS parts, faults, report plans, message ids.

Pure: random values, times and counters come from the caller, so each decision is reproducible in a test.
"""

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

# GSM 03.38 default alphabet (escape excluded) and the extension characters that take two septets.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€")
GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION
# Scanned in C rather than character by character. Built from the sets above rather than taken from
# `shared.sms`, whose extension set also holds the form feed: a text with one would count differently here.
_NOT_GSM7 = re.compile("[^" + re.escape("".join(sorted(GSM7_ALL))) + "]")
_GSM7_EXTENDED = re.compile("[" + re.escape("".join(sorted(GSM7_EXTENSION))) + "]")
_ASCII_BASIC = bytes(sorted(ord(c) for c in GSM7_BASIC if c.isascii()))
_ASCII_EXTENSION = bytes(sorted(ord(c) for c in GSM7_EXTENSION if c.isascii()))

INVALID_DESTINATION = "invalid destination"
EMPTY_TEXT = "empty text"
INVALID_SENDER = "invalid sender"
DESTINATION_REJECTED = "destination rejected"


def parse_e164(destination: str) -> int | None:
    """The digits of `+` followed by 8-15 digits as an int, or None.

    A leading 0 is refused (no E.164 country code starts with 0), so the int keeps every digit.
    """
    if not 9 <= len(destination) <= 16 or destination[0] != "+":
        return None
    digits = destination[1:]
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
        return None
    return int(digits)


def rejection_modulus(reject_share: float) -> int:
    """0 when nothing is rejected by rule; else every destination divisible by it is rejected."""
    return round(1 / reject_share) if reject_share > 0 else 0


@lru_cache(maxsize=4096)
def is_valid_sender(sender: str) -> bool:
    """Numeric sender ids hold 1-16 digits, alphanumeric ones 1-11 printable ASCII characters."""
    if sender.isascii() and sender.isdigit():
        return len(sender) <= 16
    return 1 <= len(sender) <= 11 and sender.isascii() and sender.isprintable()


def count_parts(text: str) -> int:
    """SMS parts of `text`: GSM-7 160/153 septets, else UCS-2 70/67 UTF-16 units.

    Like most counters, it ignores that a real splitter never cuts an escape sequence or a surrogate pair
    across two parts, which can add one part at a boundary.
    """
    if text.isascii():
        # Bytes of ASCII text outside the basic alphabet: none, extension characters only, or others.
        rest = text.encode().translate(None, _ASCII_BASIC)
        if not rest:
            return _gsm7_parts(len(text))
        if not rest.translate(None, _ASCII_EXTENSION):
            return _gsm7_parts(len(text) + len(rest))
        return _ucs2_parts(len(text))
    if _NOT_GSM7.search(text) is None:
        return _gsm7_parts(len(text) + len(_GSM7_EXTENDED.findall(text)))
    return _ucs2_parts(len(text.encode("utf-16-le")) // 2)


def count_parts_of_all(texts: Sequence[str]) -> list[int]:
    """`count_parts` of each text; a whole call of texts in the basic alphabet takes one scan in C."""
    joined = "".join(texts)
    if joined.isascii() and not joined.encode().translate(None, _ASCII_BASIC):
        return [1 if n <= 160 else -(-n // 153) for n in map(len, texts)]
    return list(map(count_parts, texts))


def _gsm7_parts(septets: int) -> int:
    return 1 if septets <= 160 else -(-septets // 153)


def _ucs2_parts(units: int) -> int:
    return 1 if units <= 70 else -(-units // 67)


def judge_item(destination: str, text: str, sender: str, modulus: int) -> tuple[str | None, int, int]:
    """(rejection reason or None, destination digits, parts) for one well-formed item."""
    digits = parse_e164(destination)
    if digits is None:
        return INVALID_DESTINATION, 0, 0
    if not text:
        return EMPTY_TEXT, digits, 0
    if not is_valid_sender(sender):
        return INVALID_SENDER, digits, 0
    if modulus and digits % modulus == 0:
        return DESTINATION_REJECTED, digits, 0
    return None, digits, count_parts(text)


def campaign_of(reference: str | None) -> str:
    """The sender writes `reference` as "{campaign_id}:{recipient_id}"."""
    if reference is None:
        return "-"
    return reference.partition(":")[0]


class Fault(enum.Enum):
    NONE = "none"
    HTTP_429 = "429"
    HTTP_500 = "500"
    TIMEOUT = "timeout"


def choose_fault(draw: float, http_429_share: float, http_500_share: float, timeout_share: float) -> Fault:
    """One fault (or none) for a send call, from one uniform draw in [0, 1)."""
    if draw < http_429_share:
        return Fault.HTTP_429
    if draw < http_429_share + http_500_share:
        return Fault.HTTP_500
    if draw < http_429_share + http_500_share + timeout_share:
        return Fault.TIMEOUT
    return Fault.NONE


# Report codes: the status in the low two bits, flags above. Small ints keep the pending queue lean.
SENT, DELIVERED, FAILURE = 0, 1, 2
STATUS_MASK = 3
ALT_SPELLING = 4
DUPLICATE = 8
STATUS_NAMES = ("Sent", "Delivered", "Failure")
FAILURE_ERROR = "Undeliverable"
# Gap between a final report and a report that must come after it (duplicate, late "Sent").
LATER_MS = 1


def choose_final_status(draw: float, failure_share: float) -> int:
    return FAILURE if draw < failure_share else DELIVERED


@dataclass(frozen=True, slots=True)
class ReportShares:
    delay_ms: int
    jitter_ms: int
    failure: float
    duplicate: float
    sent_first: float
    out_of_order: float
    alt_spelling: float

    @property
    def plain(self) -> bool:
        """True when every message gets exactly one Delivered report after `delay_ms`."""
        return not (
            self.jitter_ms
            or self.failure
            or self.duplicate
            or self.sent_first
            or self.out_of_order
            or self.alt_spelling
        )


def plan_reports(draw: Callable[[], float], shares: ReportShares) -> list[tuple[int, int]]:
    """(milliseconds after acceptance, report code) of every report for one message.

    A report that must precede another is planned at an earlier or equal time with a smaller code; callers
    order equal times by code, so "Sent" (code 0) goes first.
    """
    final_at = shares.delay_ms + (int(draw() * shares.jitter_ms) if shares.jitter_ms else 0)
    code = choose_final_status(draw(), shares.failure) if shares.failure else DELIVERED
    flags = ALT_SPELLING if shares.alt_spelling and draw() < shares.alt_spelling else 0
    plan = [(final_at, code | flags)]
    if shares.duplicate and draw() < shares.duplicate:
        plan.append((final_at + LATER_MS, code | flags | DUPLICATE))
    if shares.out_of_order and draw() < shares.out_of_order:
        plan.append((final_at + 2 * LATER_MS, SENT | flags))
    elif shares.sent_first and draw() < shares.sent_first:
        plan.append((final_at // 2, SENT | flags))
    return plan


def plan_many(draw: Callable[[], float], shares: ReportShares, count: int) -> list[tuple[int, int, int]]:
    """`plan_reports` of `count` messages in a row, as (milliseconds after acceptance, message index, code),
    drawing the same numbers in the same order. A plan of one final report each is built in one pass."""
    if shares.duplicate or shares.sent_first or shares.out_of_order or shares.alt_spelling:
        return [(at, i, code) for i in range(count) for at, code in plan_reports(draw, shares)]
    delay, jitter, failure = shares.delay_ms, shares.jitter_ms, shares.failure
    if jitter and failure:
        # A tuple is built left to right: the jitter draw, then the failure draw, as in plan_reports.
        return [
            (delay + int(draw() * jitter), i, FAILURE if draw() < failure else DELIVERED)
            for i in range(count)
        ]
    if jitter:
        return [(delay + int(draw() * jitter), i, DELIVERED) for i in range(count)]
    if failure:
        return [(delay, i, FAILURE if draw() < failure else DELIVERED) for i in range(count)]
    return [(delay, i, DELIVERED) for i in range(count)]


def report_payload(message_id: str, code: int, updated_at: str) -> dict[str, str | None]:
    status = STATUS_NAMES[code & STATUS_MASK]
    error = FAILURE_ERROR if code & STATUS_MASK == FAILURE else None
    if code & ALT_SPELLING:
        return {"messageId": message_id, "status": status, "errorcode": error, "timestamp": updated_at}
    return {"messageId": message_id, "deliveryStatus": status, "updatedAt": updated_at, "error": error}


REPORT_HEAD = '{"messageId":"'


def report_tail(code: int, updated_at: str) -> str:
    """The JSON text of `report_payload` after its message id, as orjson writes it: a report is then
    `REPORT_HEAD + message_id + tail` (ids and timestamps hold no character JSON would escape)."""
    status = STATUS_NAMES[code & STATUS_MASK]
    error = f'"{FAILURE_ERROR}"' if code & STATUS_MASK == FAILURE else "null"
    if code & ALT_SPELLING:
        return f'","status":"{status}","errorcode":{error},"timestamp":"{updated_at}"}}'
    return f'","deliveryStatus":"{status}","updatedAt":"{updated_at}","error":{error}}}'


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(CROCKFORD)}
_PAIRS = tuple(a + b for a in CROCKFORD for b in CROCKFORD)  # 10 bits → 2 characters


def encode_crockford(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    if value:
        raise ValueError("value does not fit in width")
    return "".join(reversed(chars))


class MessageIds:
    """26-character ULID-like ids: 10 characters of start time (ms), 8 of a per-run nonce, 8 of a counter.

    Sequential within a run, so an id decodes back to its counter and the store needs no id index.
    """

    COUNTER_BITS = 40

    def __init__(self, start_ms: int, nonce: int) -> None:
        self.prefix = encode_crockford(start_ms, 10) + encode_crockford(nonce & (2**40 - 1), 8)

    def encode(self, counter: int) -> str:
        p = _PAIRS
        return (
            self.prefix
            + p[counter >> 30]
            + p[(counter >> 20) & 1023]
            + p[(counter >> 10) & 1023]
            + p[counter & 1023]
        )

    def encode_run(self, first: int, count: int) -> list[str]:
        """`encode` of counters `first .. first + count - 1`: one prefix per 1,024 ids, the rest in C."""
        ids: list[str] = []
        p, counter, end = _PAIRS, first, first + count
        while counter < end:
            low = counter & 1023
            take = min(1024 - low, end - counter)
            head = self.prefix + p[counter >> 30] + p[(counter >> 20) & 1023] + p[(counter >> 10) & 1023]
            ids += map(head.__add__, p[low : low + take])
            counter += take
        return ids

    def decode(self, message_id: str) -> int | None:
        """The counter of an id issued by this run, or None for any other string."""
        if len(message_id) != 26 or not message_id.startswith(self.prefix):
            return None
        counter = 0
        for char in message_id[18:]:
            value = _CROCKFORD_VALUE.get(char)
            if value is None:
                return None
            counter = counter << 5 | value
        return counter


def reports_body(
    spans: Sequence[tuple[int, int, int]], ids: MessageIds, updated_at: str, single_object: bool
) -> bytes:
    """`orjson.dumps` of the `report_payload` of each report of (first counter, code, count) spans, byte
    for byte, joined from pieces: one join per span. A lone report is a bare object with `single_object`."""
    tails: dict[int, str] = {}
    pieces = []
    for counter, code, count in spans:
        tail = tails.get(code)
        if tail is None:
            tail = tails[code] = report_tail(code, updated_at)
        if count == 1:
            pieces.append(REPORT_HEAD + ids.encode(counter) + tail)
        else:
            between = tail + "," + REPORT_HEAD
            pieces.append(REPORT_HEAD + between.join(ids.encode_run(counter, count)) + tail)
    if single_object and len(spans) == 1 and spans[0][2] == 1:
        return pieces[0].encode()
    return ("[" + ",".join(pieces) + "]").encode()
