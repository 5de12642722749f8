"""Pending delivery reports ordered by due time, kept small and cheap to take.

Reports wait in one bucket per due millisecond (a heap orders the due times), each report an int packing
(message counter, report code, run length): a run of consecutive messages with the same due time and code
(a whole batch, when reports are neither jittered nor varied) takes one entry. A bucket is sorted when it
is taken from, so jittered reports cost an append and a share of a sort each, not a heap push and pop.
"""

import heapq

Span = tuple[int, int, int]  # (first message counter, report code, number of consecutive messages)

_COUNT_BITS = 13
_CODE_BITS = 4
MAX_RUN = 1 << _COUNT_BITS
_CODE_SHIFT = _COUNT_BITS
_COUNTER_SHIFT = _CODE_SHIFT + _CODE_BITS
_COUNT_MASK = MAX_RUN - 1
_CODE_MASK = (1 << _CODE_BITS) - 1


class ReportQueue:
    """Reports by due time (ms on any monotonic clock); `len` counts reports, not entries."""

    def __init__(self) -> None:
        self._due: list[int] = []  # heap of the keys of `_buckets`
        self._buckets: dict[int, list[int]] = {}
        self._reports = 0

    def __len__(self) -> int:
        return self._reports

    def clear(self) -> None:
        self._due.clear()
        self._buckets.clear()
        self._reports = 0

    def next_due_ms(self) -> int | None:
        return self._due[0] if self._due else None

    def push(self, due_ms: int, counter: int, code: int, count: int = 1) -> None:
        """Queue reports `code` for messages `counter .. counter + count - 1`, due at `due_ms`."""
        self._reports += count
        bucket = self._bucket(due_ms)
        while count > 0:
            run = min(count, MAX_RUN)
            bucket.append(_pack(counter, code, run))
            counter += run
            count -= run

    def push_planned(self, now_ms: int, first_counter: int, plan: list[tuple[int, int, int]]) -> None:
        """Queue the reports of `domain.plan_many` for messages from `first_counter` on, accepted at `now_ms`.

        Consecutive messages whose reports share due time and code become one entry, as in `push`.
        """
        self._reports += len(plan)
        found, bucket_of = self._buckets.get, self._bucket
        bucket: list[int] = []
        last_due, last_index, last_code = -1, -2, -1
        for at, index, code in plan:
            due = now_ms + at
            if due != last_due:
                bucket, last_due = found(due) or bucket_of(due), due
            elif index == last_index + 1 and code == last_code and bucket[-1] & _COUNT_MASK != _COUNT_MASK:
                bucket[-1] += 1  # the run just appended grows by one message
                last_index = index
                continue
            bucket.append((first_counter + index) << _COUNTER_SHIFT | code << _CODE_SHIFT)
            last_index, last_code = index, code

    def take(self, cutoff_ms: float, limit: int) -> list[Span]:
        """Remove and return up to `limit` reports due at or before `cutoff_ms`, earliest first; reports due
        together come by message counter, then code."""
        due, buckets, spans, room = self._due, self._buckets, [], limit
        while room and due and due[0] <= cutoff_ms:
            bucket = buckets[due[0]]
            bucket.sort()
            used = 0
            for entry in bucket:
                count = (entry & _COUNT_MASK) + 1
                counter, code = entry >> _COUNTER_SHIFT, (entry >> _CODE_SHIFT) & _CODE_MASK
                if count > room:
                    # The rest of the run keeps its due time and stays ahead of later counters.
                    bucket[used] = _pack(counter + room, code, count - room)
                    spans.append((counter, code, room))
                    room = 0
                    break
                spans.append((counter, code, count))
                room -= count
                used += 1
                if not room:
                    break
            if used == len(bucket):
                del buckets[heapq.heappop(due)]
            else:
                del bucket[:used]
        self._reports -= limit - room
        return spans

    def _bucket(self, due_ms: int) -> list[int]:
        bucket = self._buckets.get(due_ms)
        if bucket is None:
            bucket = self._buckets[due_ms] = []
            heapq.heappush(self._due, due_ms)
        return bucket


def _pack(counter: int, code: int, count: int) -> int:
    return counter << _COUNTER_SHIFT | code << _CODE_SHIFT | (count - 1)
