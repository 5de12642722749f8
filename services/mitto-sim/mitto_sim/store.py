"""In-memory store of accepted messages; sends per (campaign, phone) are counted from it on demand.

Messages live in parallel typed columns indexed by `counter - base`, texts and references in byte blobs,
so a million messages take about 80 bytes each plus their texts, instead of a dict per message. The sends
per phone are read by the control routes only, once per check: a scan of two columns in C (~0.1 s per
million messages) instead of a counter per phone kept for every message (~90 MB per million).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter, methodcaller
from typing import cast

from mitto_sim.columns import Blob, Column
from mitto_sim.domain import SENT

_NO_REFERENCE = 0xFFFFFFFF
_PARTITION = methodcaller("partition", ":")
_FIRST = itemgetter(0)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    counter: int
    destination: str
    text: str
    sender: str
    traffic_account_id: str
    reference: str | None
    parts: int
    status: int
    created_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class SendsSummary:
    campaign: str
    phones: int
    sends: int
    max_per_phone: int
    duplicates: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class NewMessages:
    """Columns of the accepted items of one call, in request order."""

    accounts: Sequence[str]
    destinations: Sequence[int]
    texts: Sequence[str]
    senders: Sequence[str]
    references: Sequence[str | None]
    parts: Sequence[int]


def _encoded(strings: Sequence[str]) -> tuple[bytes, list[int]]:
    """The UTF-8 of `strings` one after another, and the length of each: one encode for a whole call."""
    joined = "".join(strings)
    data = joined.encode()
    if len(data) == len(joined):  # ASCII: as many bytes as characters
        return data, list(map(len, strings))
    return data, [len(s.encode()) for s in strings]


def _common_campaign(references: Sequence[str]) -> str | None:
    """The campaign of every reference when they all share one (`domain.campaign_of`), else None."""
    campaign, colon, _ = references[0].partition(":")
    lines = "\n" + "\n".join(references)
    # No reference holds a newline, so each "\n" starts one, and each starts with "campaign:".
    if colon and lines.count("\n") == len(references) and lines.count(f"\n{campaign}:") == len(references):
        return campaign
    return None


class _Interned:
    """Few distinct strings (accounts, senders, campaigns) stored once, referred to by a small int."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.values: list[str] = []

    def id_of(self, value: str) -> int:
        found = self.ids.get(value)
        if found is None:
            found = self.ids[value] = len(self.values)
            self.values.append(value)
        return found

    def ids_of(self, values: Sequence[str]) -> list[int]:
        """`id_of` each value; a call holds few distinct ones, most often one."""
        if values and values.count(values[0]) == len(values):
            return [self.id_of(values[0])] * len(values)
        for value in set(values):
            self.id_of(value)
        return list(map(self.ids.__getitem__, values))


class MessageStore:
    """Messages with counters in [base, base + len). A new store starts at the next counter after a reset,
    so ids issued before the reset are unknown afterwards, not confused with new messages."""

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self._destinations = Column("q")
        self._accounts = Column("I")
        self._senders = Column("I")
        self._campaigns = Column("I")
        self._text_handle = Column("Q")
        self._text_len = Column("I")
        self._ref_handle = Column("Q")
        self._ref_len = Column("I")
        self._parts = Column("B")
        self._status = Column("B")
        self._created = Column("q")
        self._updated = Column("q")
        self._texts = Blob()
        self._refs = Blob()
        self._account_names = _Interned()
        self._sender_names = _Interned()
        self._campaign_names = _Interned()

    def __len__(self) -> int:
        return len(self._status)

    @property
    def next_counter(self) -> int:
        return self.base + len(self._status)

    def add(self, batch: NewMessages, now_ms: int) -> int:
        """Store `batch`; returns the counter of its first message."""
        first = self.next_counter
        n = len(batch.destinations)
        self._destinations.extend(batch.destinations)
        parts = batch.parts
        self._parts.extend(parts if max(parts, default=0) <= 255 else [min(p, 255) for p in parts])
        self._created.extend_constant(now_ms, n)
        self._updated.extend_constant(now_ms, n)
        self._accounts.extend(self._account_names.ids_of(batch.accounts))
        self._senders.extend(self._sender_names.ids_of(batch.senders))
        self._add_texts(batch.texts)
        self._add_references(batch.references)
        self._status.extend_constant(SENT, n)  # last: its length is the store's length
        return first

    def _add_texts(self, texts: Sequence[str]) -> None:
        n = len(texts)
        if n > 1 and texts.count(texts[0]) == n:
            # One text for every recipient: stored once. Other repeats cost little once a chunk is compressed.
            raw = texts[0].encode()
            self._text_handle.extend_constant(self._texts.add(raw), n)
            self._text_len.extend_constant(len(raw), n)
            return
        data, lengths = _encoded(texts)
        self._text_handle.extend(self._texts.add_joined(data, lengths))
        self._text_len.extend(lengths)

    def _add_references(self, references: Sequence[str | None]) -> None:
        if None in references:
            data, sizes = _encoded([reference or "" for reference in references])
            self._ref_handle.extend(self._refs.add_joined(data, sizes))
            lengths = [_NO_REFERENCE if ref is None else n for ref, n in zip(references, sizes, strict=True)]
            # domain.campaign_of, in one pass
            campaigns = ["-" if ref is None else ref.partition(":")[0] for ref in references]
            self._campaigns.extend(self._campaign_names.ids_of(campaigns))
        else:
            refs = cast(Sequence[str], references)
            data, lengths = _encoded(refs)
            self._ref_handle.extend(self._refs.add_joined(data, lengths))
            campaign = _common_campaign(refs)
            if campaign is not None:
                self._campaigns.extend_constant(self._campaign_names.id_of(campaign), len(refs))
            else:
                self._campaigns.extend(self._campaign_names.ids_of(list(map(_FIRST, map(_PARTITION, refs)))))
        self._ref_len.extend(lengths)

    def get(self, counter: int) -> StoredMessage | None:
        i = counter - self.base
        if not 0 <= i < len(self._status):
            return None
        ref_len = self._ref_len[i]
        reference = None
        if ref_len != _NO_REFERENCE:
            reference = self._refs.get(self._ref_handle[i], ref_len).decode()
        return StoredMessage(
            counter=counter,
            destination=f"+{self._destinations[i]}",
            text=self._texts.get(self._text_handle[i], self._text_len[i]).decode(),
            sender=self._sender_names.values[self._senders[i]],
            traffic_account_id=self._account_names.values[self._accounts[i]],
            reference=reference,
            parts=self._parts[i],
            status=self._status[i],
            created_ms=self._created[i],
            updated_ms=self._updated[i],
        )

    def finalise(self, counters: Sequence[int], counts: Sequence[int], status: int, now_ms: int) -> int:
        """Record acknowledged final reports of messages `counters[i] .. counters[i] + counts[i] - 1`.
        Returns how many became final: unknown messages and those already final are left as they are."""
        length, replace = len(self._status), self._status.replace
        if counts.count(1) == len(counts):  # jittered reports: one message each
            indexes = list(map((-self.base).__add__, counters))
            if indexes and (min(indexes) < 0 or max(indexes) >= length):
                indexes = [i for i in indexes if 0 <= i < length]
            return self._status.replace_each(indexes, SENT, status, also=self._updated, also_value=now_ms)
        done = 0
        for counter, count in zip(counters, counts, strict=True):
            start, stop = max(counter - self.base, 0), min(counter - self.base + count, length)
            if start < stop:
                done += replace(start, stop, SENT, status, also=self._updated, also_value=now_ms)
        return done

    def sends_of(self, campaign: str, duplicates_cap: int = 100) -> SendsSummary:
        counts = self._phone_counts(campaign)
        duplicates: list[tuple[str, int]] = []
        for digits, count in counts.items():
            if count > 1 and len(duplicates) < duplicates_cap:
                duplicates.append((f"+{digits}", count))
        return SendsSummary(
            campaign=campaign,
            phones=len(counts),
            sends=sum(counts.values()),
            max_per_phone=max(counts.values(), default=0),
            duplicates=duplicates,
        )

    def send_count(self, campaign: str, digits: int) -> int:
        campaign_id = self._campaign_names.ids.get(campaign)
        if campaign_id is None:
            return 0
        total = 0
        for campaigns, destinations in zip(
            self._campaigns.chunks(), self._destinations.chunks(), strict=True
        ):
            if digits in destinations:  # a C scan; most chunks never held the phone
                total += sum(
                    1
                    for c, d in zip(campaigns, destinations, strict=True)
                    if d == digits and c == campaign_id
                )
        return total

    def _phone_counts(self, campaign: str) -> Counter[int]:
        """Accepted messages per destination for `campaign`, counted from the stored columns."""
        counts: Counter[int] = Counter()
        campaign_id = self._campaign_names.ids.get(campaign)
        if campaign_id is None:
            return counts
        for campaigns, destinations in zip(
            self._campaigns.chunks(), self._destinations.chunks(), strict=True
        ):
            counts.update(compress(destinations, map(campaign_id.__eq__, campaigns)))
        return counts
