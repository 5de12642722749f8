"""Contact imports, without I/O: incremental CSV / JSON / NDJSON readers fed with the request body as it
arrives (so a large file is never held whole), and the row rules (phone to E.164, names, consent, tags,
attributes). A bad row becomes a reason; the import goes on with the rest.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from enqueuer.domain import normalise_phone

MAX_PENDING_BYTES = 1024 * 1024  # one row larger than this is not a contact
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_VALUE = 500
MAX_TAGS = 50

COLUMN_ALIASES = {
    "phone": "phone",
    "phonenumber": "phone",
    "phonee164": "phone",
    "mobile": "phone",
    "msisdn": "phone",
    "firstname": "first_name",
    "lastname": "last_name",
    "email": "email",
    "consent": "consent",
    "tags": "tags",
}
CONSENT_WORDS = {
    "granted": "granted",
    "yes": "granted",
    "true": "granted",
    "1": "granted",
    "optedin": "granted",
    "subscribed": "granted",
    "denied": "denied",
    "no": "denied",
    "false": "denied",
    "0": "denied",
    "optedout": "denied",
    "unsubscribed": "denied",
    "unknown": "unknown",
}


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (not a bad row): the import is refused and nothing changes."""


@dataclass(frozen=True)
class ContactRow:
    phone: str
    first_name: str | None
    last_name: str | None
    email: str | None
    attributes: dict[str, str]
    tags: tuple[str, ...]
    consent: str | None  # None: the row does not say (a new contact gets the import's default)


@functools.lru_cache(maxsize=4096)
def column_key(name: str) -> str:
    """Canonical field for a column name: a known field, or an attribute key (snake case). Cached: every
    row of a file asks again for the same few header names."""
    squashed = re.sub(r"[\s_\-]+", "", name.strip().lower())
    if squashed in COLUMN_ALIASES:
        return COLUMN_ALIASES[squashed]
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def parse_row(fields: dict[str, Any], region: str) -> ContactRow:
    """One contact from a row of named fields; ValueError with the reason when the row is bad."""
    values = {column_key(k): v for k, v in fields.items() if isinstance(k, str)}
    raw_phone = values.pop("phone", None)
    if raw_phone is None or str(raw_phone).strip() == "":
        raise ValueError("no phone")
    phone = normalise_phone(str(raw_phone), region)
    first_name = _text(values.pop("first_name", None), "first name")
    last_name = _text(values.pop("last_name", None), "last name")
    email = _text(values.pop("email", None), "email")
    if email is not None and not EMAIL.match(email):
        raise ValueError(f"invalid email {email!r}")
    consent = _consent(values.pop("consent", None))
    tags = _tags(values.pop("tags", None))
    attributes: dict[str, str] = {}
    for key, value in values.items():
        text = _text(value, key)
        if text is None:
            continue
        if not ATTRIBUTE_KEY.match(key):
            raise ValueError(f"attribute name {key!r} must be letters, digits and _ (starting with a letter)")
        attributes[key] = text
    return ContactRow(phone, first_name, last_name, email, attributes, tags, consent)


def _text(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, dict | list):
        if isinstance(value, dict | list):
            raise ValueError(f"{what} must be a plain value")
        return None
    text = str(value).strip()
    if len(text) > MAX_VALUE:
        raise ValueError(f"{what} is longer than {MAX_VALUE} characters")
    return text or None


def _consent(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    if isinstance(value, bool):
        return "granted" if value else "denied"
    word = re.sub(r"[\s_\-]+", "", str(value).strip().lower())
    if word not in CONSENT_WORDS:
        raise ValueError(f"consent {value!r} is not one of granted, denied, unknown")
    return CONSENT_WORDS[word]


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else re.split(r"[;|,]", str(value))
    tags = tuple(dict.fromkeys(str(t).strip().lower() for t in items if str(t).strip()))
    if len(tags) > MAX_TAGS or any(len(t) > 100 for t in tags):
        raise ValueError(f"at most {MAX_TAGS} tags of up to 100 characters")
    return tags


# --- incremental readers -----------------------------------------------------------------------------


class CsvReader:
    """CSV with a header row, fed in chunks. Records are cut only at a newline outside quotes, so a quoted
    field may hold newlines and a chunk may end anywhere."""

    def __init__(self) -> None:
        self._pending = ""
        self._bytes = b""
        self.header: list[str] | None = None

    def feed(self, chunk: bytes) -> Iterator[dict[str, str]]:
        data = self._bytes + chunk
        try:
            text = data.decode("utf-8-sig" if self.header is None and not self._pending else "utf-8")
            self._bytes = b""
        except UnicodeDecodeError as exc:
            if len(data) - exc.start > 4:  # not a character cut by the chunk boundary
                raise ImportFormatError("the file is not UTF-8 text") from exc
            text, self._bytes = data[: exc.start].decode("utf-8-sig"), data[exc.start :]
        self._pending += text
        cut = _last_record_end(self._pending)
        if cut < 0:
            if len(self._pending) > MAX_PENDING_BYTES:
                raise ImportFormatError("a CSV record is longer than 1 MB (an unclosed quote?)")
            return iter(())
        complete, self._pending = self._pending[: cut + 1], self._pending[cut + 1 :]
        return self._records(complete)

    def finish(self) -> Iterator[dict[str, str]]:
        if self._bytes:
            raise ImportFormatError("the file is not UTF-8 text")
        rest, self._pending = self._pending, ""
        if rest.count('"') % 2:
            raise ImportFormatError("the file ends inside a quoted field")
        return self._records(rest) if rest.strip() else iter(())

    def _records(self, text: str) -> Iterator[dict[str, str]]:
        for record in csv.reader(io.StringIO(text)):
            if not record or all(not f.strip() for f in record):
                continue
            if self.header is None:
                self.header = [h.strip() for h in record]
                if "phone" not in {column_key(h) for h in self.header}:
                    raise ImportFormatError("the CSV header has no phone column")
                continue
            yield dict(zip(self.header, record, strict=False))


def _last_record_end(text: str) -> int:
    """Index of the last newline that ends a record (an even number of quotes before it), or -1."""
    idx = text.rfind("\n")
    while idx >= 0:
        if text.count('"', 0, idx) % 2 == 0:
            return idx
        idx = text.rfind("\n", 0, idx)
    return -1


class JsonReader:
    """A JSON array of objects, or NDJSON (one object per line), fed in chunks."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pos = 0
        self._started = False
        self._array: bool | None = None
        self._done = False
        self._bytes = b""
        self._decoder = json.JSONDecoder()

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        data = self._bytes + chunk
        try:
            text, self._bytes = data.decode("utf-8"), b""
        except UnicodeDecodeError as exc:
            if len(data) - exc.start > 4:
                raise ImportFormatError("the body is not UTF-8 JSON") from exc
            text, self._bytes = data[: exc.start].decode("utf-8"), data[exc.start :]
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0
        return iter(list(self._objects(final=False)))

    def finish(self) -> Iterator[dict[str, Any]]:
        rows = list(self._objects(final=True))
        if self._array and not self._done:
            raise ImportFormatError("the JSON array is not closed")
        if self._array is None and not rows:
            raise ImportFormatError("the body holds no JSON rows")
        return iter(rows)

    def _objects(self, *, final: bool) -> Iterator[dict[str, Any]]:
        buf = self._buffer
        while True:
            pos = _skip(buf, self._pos, ", \t\r\n" if self._array else " \t\r\n")
            if pos >= len(buf):
                self._pos = pos
                return
            if self._array is None:
                self._array = buf[pos] == "["
                if self._array:
                    pos += 1
                    self._pos = pos
                    continue
            if self._done:
                raise ImportFormatError("unexpected content after the JSON array")
            if self._array and buf[pos] == "]":
                self._done = True
                self._pos = pos + 1
                continue
            try:
                value, end = self._decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if final or len(buf) - pos > MAX_PENDING_BYTES:
                    raise ImportFormatError(f"invalid JSON: {exc.msg} at character {exc.pos}") from exc
                self._pos = pos
                return
            if end == len(buf) and not final and not isinstance(value, dict):
                self._pos = pos  # a number or word may continue in the next chunk
                return
            if not isinstance(value, dict):
                raise ImportFormatError("every row must be a JSON object")
            self._pos = end
            yield value


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos
