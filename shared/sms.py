"""SMS text: placeholder rendering and GSM-7 / UCS-2 segment counting (the unit of cost).

Rendering is shared so that the enqueuer (which prices each message) and the sender (which sends it)
produce the same text from the same template and values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = set("^{}\\[~]|€\f")
_GSM7_EXTENDED = re.compile("[" + "".join(re.escape(c) for c in sorted(GSM7_EXTENSION)) + "]")
_NOT_GSM7 = re.compile("[^" + "".join(re.escape(c) for c in sorted(GSM7_BASIC | GSM7_EXTENSION)) + "]")

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
_SPACES = re.compile(r"[ \t]+")

# Accepted spellings of each placeholder, matched case-insensitively (both seed systems' forms).
PLACEHOLDER_ALIASES = {
    "firstname": "first_name",
    "first_name": "first_name",
    "lastname": "last_name",
    "last_name": "last_name",
    "email": "email",
    "discountcode": "discount_code",
    "discount_code": "discount_code",
}


def placeholder_names(template: str) -> set[str]:
    """Canonical names used by `template`; unknown ones come back as written (lower case)."""
    return {PLACEHOLDER_ALIASES.get(m.lower(), m.lower()) for m in _PLACEHOLDER.findall(template)}


class Template:
    """A template split once at its placeholders: rendering is then a join, not a regex pass per text
    (the enqueuer prices and the sender composes every recipient's text)."""

    def __init__(self, template: str) -> None:
        pieces = _PLACEHOLDER.split(template)
        self.literals: list[str] = pieces[0::2]
        self.names: list[str] = [PLACEHOLDER_ALIASES.get(n.lower(), n.lower()) for n in pieces[1::2]]

    def render(self, values: Mapping[str, str]) -> str:
        """Fill placeholders (missing values become empty) and collapse the spaces that leaves."""
        literals, names = self.literals, self.names
        if not names:
            return normalised(literals[0])
        out = [literals[0]]
        for name, literal in zip(names, literals[1:], strict=True):
            out.append(values.get(name, ""))
            out.append(literal)
        return normalised("".join(out))


@lru_cache(maxsize=256)
def template(text: str) -> Template:
    return Template(text)


def render(template_text: str, values: Mapping[str, str]) -> str:
    """Fill placeholders (missing values become empty) and collapse the spaces that leaves."""
    return template(template_text).render(values)


def normalised(text: str) -> str:
    """Runs of spaces and tabs become one space; lines and the whole text are stripped. Most texts already
    are, and are returned as they are after a few C-speed checks."""
    if "\n" not in text and "\t" not in text and "  " not in text and text == text.strip():
        return text
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


def compose(
    template: str,
    values: Mapping[str, str],
    *,
    marketing: bool,
    offer_link: str | None,
    unsubscribe_link: str | None,
) -> str:
    """The text a recipient receives: the rendered template, then for marketing messages the offer link
    (when the campaign has one) and the unsubscribe link. Service messages get neither."""
    text = render(template, values)
    if not marketing:
        return text
    lines = [text]
    if offer_link:
        lines.append(f"Claim Offer: {offer_link}")
    if unsubscribe_link:
        lines.append(f"To unsubscribe, tap: {unsubscribe_link}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Segments:
    encoding: Literal["GSM-7", "UCS-2"]
    parts: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    per_part: int
    left_in_part: int


def segments(text: str) -> Segments:
    """How many SMS parts `text` takes: GSM-7 160 single / 153 per part, UCS-2 70 / 67."""
    gsm7, count = units(text)
    single, multi = (160, 153) if gsm7 else (70, 67)
    if count <= single:
        n, per_part = 1, single
    else:
        n, per_part = -(-count // multi), multi
    return Segments("GSM-7" if gsm7 else "UCS-2", n, count, per_part, n * per_part - count)


def parts(text: str) -> int:
    """`segments(text).parts`, without building the rest: the enqueuer prices every recipient with it."""
    return parts_of(*units(text))


def parts_of(gsm7: bool, count: int) -> int:
    """Parts for `count` septets (GSM-7) or UTF-16 code units (UCS-2)."""
    single, multi = (160, 153) if gsm7 else (70, 67)
    return 1 if count <= single else -(-count // multi)


def units(text: str) -> tuple[bool, int]:
    """(GSM-7?, septets or UTF-16 code units). Scanned in C: one search for a character outside GSM-7,
    one for the extension characters (two septets each)."""
    if is_gsm7(text):
        return True, len(text) + len(_GSM7_EXTENDED.findall(text))
    return False, len(text.encode("utf-16-le")) // 2


class Tail:
    """What follows the rendered body of every text of a campaign (its links: fixed-length tokens of
    GSM-7 basic characters), counted once, so each text's parts come from scanning its body alone."""

    def __init__(self, tail: str) -> None:
        self.gsm7, self.septets = units(tail)
        self.utf16 = len(tail.encode("utf-16-le")) // 2

    def parts_with(self, body: str) -> int:
        """`parts(body + tail)`."""
        gsm7, count = units(body)
        if gsm7 and self.gsm7:
            return parts_of(True, count + self.septets)
        utf16 = len(body.encode("utf-16-le")) // 2 if gsm7 else count
        return parts_of(False, utf16 + self.utf16)


def is_gsm7(text: str) -> bool:
    return _NOT_GSM7.search(text) is None
