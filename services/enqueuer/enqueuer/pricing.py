"""The cost of a message in credits: one credit per SMS part of the exact final text the sender will send.

The final text is `shared.sms.compose` of the template, the recipient's values and the links; link tokens
have a fixed length, so any token of that length prices the real one. Placeholders change the length, so a
text with placeholders is priced per distinct set of values (a bounded cache keyed by the values' JSON).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from shared.links import TOKEN_LENGTH, link_url
from shared.sms import Segments, Tail, Template, compose, placeholder_names, segments

PRICE_TOKEN = "A" * TOKEN_LENGTH
CACHE_LIMIT = 200_000


@dataclass(frozen=True)
class TextShape:
    """What decides a message's length besides the recipient's values."""

    template: str
    marketing: bool
    has_offer: bool
    links_base_url: str


class Pricer:
    def __init__(self, shape: TextShape) -> None:
        self.shape = shape
        self.placeholders = frozenset(placeholder_names(shape.template))
        self._offer = link_url(shape.links_base_url, "offer", PRICE_TOKEN) if shape.has_offer else None
        self._unsubscribe = link_url(shape.links_base_url, "unsubscribe", PRICE_TOKEN)
        self._template = Template(shape.template)
        self._tail = Tail(self.final_text({})[len(self._template.render({})) :])
        self.fixed: int | None = None if self.placeholders else self.segments({}).parts
        self._cache: dict[str, int] = {}

    def final_text(self, values: dict[str, str]) -> str:
        return compose(
            self.shape.template,
            values,
            marketing=self.shape.marketing,
            offer_link=self._offer if self.shape.marketing else None,
            unsubscribe_link=self._unsubscribe if self.shape.marketing else None,
        )

    def segments(self, values: dict[str, str]) -> Segments:
        return segments(self.final_text(values))

    def parts_for_json(self, values_json: str, decode: Callable[[str], dict[str, str]] | None = None) -> int:
        """Parts for a recipient whose values are `values_json` (a JSON object as PostgreSQL prints it)."""
        if self.fixed is not None:
            return self.fixed
        cached = self._cache.get(values_json)
        if cached is not None:
            return cached
        values = (decode or _decode)(values_json)
        count = self._tail.parts_with(self._template.render(values))
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()  # bounded memory; a real audience repeats values far below this
        self._cache[values_json] = count
        return count

    def parts_for_each(self, values_json: list[str]) -> list[int]:
        """`parts_for_json` of every item, with the cache read inline: a planned batch asks 5,000 times."""
        if self.fixed is not None:
            return [self.fixed] * len(values_json)
        cache, price = self._cache, self.parts_for_json
        return [cache.get(v) or price(v) for v in values_json]


def _decode(values_json: str) -> dict[str, str]:
    raw = orjson.loads(values_json)
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
