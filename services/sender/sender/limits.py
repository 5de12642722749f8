"""Rate limits per traffic account, in this process: messages per second and concurrent bulk calls.

The message rate is a token bucket (holding `burst_seconds` of traffic) kept as one number, the time at
which the bucket is full again (GCRA). A bulk call may need more tokens than the bucket holds: it waits for
a full bucket and leaves it in debt, so the average rate holds whatever the batch size.

Each replica limits itself: with N sender replicas give each `total / N` (MITTO_MESSAGES_PER_SECOND is per
process). Mitto's own 429s remain the backstop: they are retried after Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class MessageRate:
    """A token bucket of `per_second * burst_seconds` messages; `per_second <= 0` means no limit."""

    def __init__(self, per_second: float, burst_seconds: float = 1.0) -> None:
        self.per_second = per_second
        self.capacity = per_second * max(burst_seconds, 0.0)
        self._full_at = float("-inf")

    def reserve(self, n: int, now: float) -> float:
        """Book `n` messages; returns the delay after `now` at which they may go out."""
        if self.per_second <= 0 or n <= 0:
            return 0.0
        need = min(float(n), self.capacity)
        start = max(now, self._full_at - (self.capacity - need) / self.per_second)
        self._full_at = max(self._full_at, start) + n / self.per_second
        return start - now

    def refund(self, n: int) -> None:
        """Give back a booking that was not used (the batch was deferred or already sent)."""
        if self.per_second > 0:
            self._full_at -= n / self.per_second


@dataclass
class Permit:
    rate: MessageRate
    messages: int
    used: bool = True

    def unused(self) -> None:
        """The call did not happen: return its messages to the bucket."""
        if self.used:
            self.used = False
            self.rate.refund(self.messages)


class TrafficLimits:
    """One message rate and one concurrent-call cap per traffic account."""

    def __init__(
        self,
        messages_per_second: float,
        burst_seconds: float,
        concurrent_calls: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_second = messages_per_second
        self._burst = burst_seconds
        self._calls = concurrent_calls
        self._clock = clock
        self._accounts: dict[str, tuple[MessageRate, asyncio.Semaphore]] = {}

    def _of(self, account: str) -> tuple[MessageRate, asyncio.Semaphore]:
        if account not in self._accounts:
            self._accounts[account] = (
                MessageRate(self._per_second, self._burst),
                asyncio.Semaphore(self._calls),
            )
        return self._accounts[account]

    @asynccontextmanager
    async def call(self, account: str, messages: int) -> AsyncIterator[Permit]:
        """Hold one of the account's call slots and wait until `messages` fit in its rate."""
        rate, slots = self._of(account)
        async with slots:
            permit = Permit(rate, messages)
            delay = rate.reserve(messages, self._clock())
            if delay > 0:
                await asyncio.sleep(delay)
            yield permit
