"""Pending delivery reports ordered by due time, kept small.

Each heap entry is one int packing (due ms, message counter, report code, run length): about 50 bytes
instead of a tuple's 130, and a run of consecutive messages with the same due time and code (a whole
batch, when reports are neither jittered nor varied) takes one entry.
"""

import heapq

Span = tuple[int, int, int]  # (first message counter, report code, number of consecutive messages)

_COUNT_BITS = 13
_CODE_BITS = 4
_COUNTER_BITS = 40  # as many as message ids carry
MAX_RUN = 1 << _COUNT_BITS
_CODE_SHIFT = _COUNT_BITS
_COUNTER_SHIFT = _CODE_SHIFT + _CODE_BITS
_DUE_SHIFT = _COUNTER_SHIFT + _COUNTER_BITS


class ReportQueue:
    """Reports by due time (ms on any monotonic clock); `len` counts reports, not entries."""

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._reports = 0

    def __len__(self) -> int:
        return self._reports

    def clear(self) -> None:
        self._heap.clear()
        self._reports = 0

    def next_due_ms(self) -> int | None:
        return self._heap[0] >> _DUE_SHIFT if self._heap else None

    def push(self, due_ms: int, counter: int, code: int, count: int = 1) -> None:
        """Queue reports `code` for messages `counter .. counter + count - 1`, due at `due_ms`."""
        self._reports += count
        while count > 0:
            run = min(count, MAX_RUN)
            heapq.heappush(self._heap, _pack(due_ms, counter, code, run))
            counter += run
            count -= run

    def take(self, cutoff_ms: float, limit: int) -> list[Span]:
        """Remove and return up to `limit` reports due at or before `cutoff_ms`, earliest first."""
        heap, spans, room = self._heap, [], limit
        while heap and room and heap[0] >> _DUE_SHIFT <= cutoff_ms:
            entry = heapq.heappop(heap)
            due_ms, counter, code, count = _unpack(entry)
            if count > room:
                # The rest of the run keeps its due time and stays ahead of later counters.
                heapq.heappush(heap, _pack(due_ms, counter + room, code, count - room))
                count = room
            spans.append((counter, code, count))
            room -= count
        self._reports -= limit - room
        return spans


def _pack(due_ms: int, counter: int, code: int, count: int) -> int:
    return due_ms << _DUE_SHIFT | counter << _COUNTER_SHIFT | code << _CODE_SHIFT | (count - 1)


def _unpack(entry: int) -> tuple[int, int, int, int]:
    return (
        entry >> _DUE_SHIFT,
        (entry >> _COUNTER_SHIFT) & ((1 << _COUNTER_BITS) - 1),
        (entry >> _CODE_SHIFT) & ((1 << _CODE_BITS) - 1),
        (entry & (MAX_RUN - 1)) + 1,
    )
