"""SMS text: placeholder rendering and GSM-7 / UCS-2 segment counting (the unit of cost).

Rendering is shared so that the enqueuer (which prices each message) and the sender (which sends it)
produce the same text from the same template and values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = set("^{}\\[~]|€\f")

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


def render(template: str, values: dict[str, str]) -> str:
    """Fill placeholders (missing values become empty) and collapse the spaces that leaves."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        return values.get(PLACEHOLDER_ALIASES.get(name, name), "")

    filled = _PLACEHOLDER.sub(fill, template)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in filled.split("\n")).strip()


def compose(
    template: str,
    values: dict[str, str],
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
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        units = sum(2 if c in GSM7_EXTENSION else 1 for c in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if units <= single:
        parts, per_part = 1, single
    else:
        parts, per_part = -(-units // multi), multi
    left = parts * per_part - units
    return Segments(encoding, max(parts, 1), units, per_part, left)  # type: ignore[arg-type]
