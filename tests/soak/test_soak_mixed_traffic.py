"""Soak: mixed traffic for SOAK_MINUTES (30 by default) with every invariant checked each minute.

Four tenants (two retail, two Shopify) keep creating campaigns: inline audiences and imported contacts,
plain, two-part and Unicode texts, sent at once or scheduled a little ahead. Meanwhile campaigns are paused
and resumed or cancelled, finished ones with failures are retried (the simulator's rejection rule changes
over time, so part of each retry gets through), delivery reports are held back and released in bursts,
the simulator answers some calls with 429s, 500s and timeouts, and an operator settles the ambiguous
batches every minute. At the end the traffic stops, the stack settles, and the full set is checked once
more. Tables of the traffic, the per-minute checks and the final check are printed (pytest -s).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from deploy.local.stack import LocalStack, StackOptions
from tests.chaos.chaos_harness import Chaos, calm_down, finish_runs, new_tenant, resolve_ambiguous
from tests.invariants import Invariants, Row, invariant_table, table
from tests.support import greek_mobiles

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
CHECK_EVERY_S = 60.0
# The simulator's rejection rule (reject_share 0.02 or 0.01): numbers divisible by 50 (or 100) are refused.
REJECT_EVERY = 50
CONTACTS = 2_000  # imported per tenant, the audience of `{"all": true}` campaigns
TEXTS = (
    "Hi {{first_name}}, 20% off today!",
    "Hi {{first_name}}, our autumn collection is in: coats, boots and knitwear at up to 40% off, this "
    "weekend only, in every shop and online. Show this message at the till or use code AUTUMN40 at checkout.",
    "Γειά σου {{first_name}}! Προσφορά 20% σε όλα τα προϊόντα σήμερα.",  # noqa: RUF001 Greek: a UCS-2 text
)
PROVIDER: dict[str, Any] = {
    "latency_ms": 40,
    "http_429_share": 0.05,
    "http_500_share": 0.004,
    "http_500_after_accept": True,
    "timeout_share": 0.004,
    "timeout_seconds": 2.5,
    "dlr_delay_ms": 500,
    "dlr_jitter_ms": 1500,
    "dlr_duplicate_share": 0.03,
    "dlr_out_of_order_share": 0.03,
    "dlr_sent_first_share": 0.03,
    "dlr_failure_share": 0.02,
}


@dataclass
class Tenant:
    name: str
    channel: str
    key: dict[str, str]
    first_phone: int  # its own range of numbers


@dataclass
class Traffic:
    """What the workload did, and every answer it did not expect (a 5xx, a 4xx other than a refusal of a
    command that came too late)."""

    counts: Counter[str] = field(default_factory=Counter)
    campaigns: dict[str, Tenant] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def answer(self, what: str, r: httpx.Response, ok: tuple[int, ...] = (200,)) -> bool:
        if r.status_code in ok:
            self.counts[what] += 1
            return True
        if r.status_code == 409:  # too late: the campaign moved on meanwhile
            self.counts[f"{what} refused (409)"] += 1
            return False
        self.unexpected.append(f"{what}: {r.status_code} {r.text[:200]}")
        return False


@pytest.fixture
async def stack() -> AsyncIterator[LocalStack]:
    options = StackOptions(
        batch_size=500,
        sim={"seed": "30", "reject_share": "0.02", "retry_after_seconds": "0", "dlr_batch_size": "300"},
        env={
            "sender": {
                "MITTO_READ_TIMEOUT_S": "1.5",
                "MAX_CONCURRENT_BULK_CALLS": "4",
                "MAX_ATTEMPTS": "12",
                "BACKOFF_BASE_S": "0.05",
                "BACKOFF_MAX_S": "0.5",
                "MITTO_MESSAGES_PER_SECOND": "300",
                "RESOLVER_INTERVAL_S": "5",
            },
            "enqueuer": {"LOOP_INTERVAL_S": "0.5"},
        },
    )
    s = LocalStack(options)
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


class Workload:
    def __init__(
        self, stack: LocalStack, http: httpx.AsyncClient, rng: random.Random, deadline: float
    ) -> None:
        self.stack = stack
        self.http = http
        self.rng = rng
        self.deadline = deadline
        self.traffic = Traffic()
        self.tenants: list[Tenant] = []
        self.reject_share = 0.02
        self.enqueuer = stack.url("enqueuer")
        self.sim = stack.url("mitto-sim")

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(max(0.0, min(self.rng.uniform(low, high), self.deadline - time.monotonic())))

    async def set_up(self) -> None:
        for i, (name, channel) in enumerate(
            [
                ("Corner shop", "retail"),
                ("Harbour shop", "shopify"),
                ("Hill shop", "retail"),
                ("Bay shop", "shopify"),
            ]
        ):
            key = await new_tenant(self.stack, self.http, name, channel)
            tenant = Tenant(name, channel, key, 7_000_000 + i * 100_000)
            csv = "phone,first_name\n" + "".join(
                f"{p},Friend{n}\n" for n, p in enumerate(greek_mobiles(tenant.first_phone, CONTACTS))
            )
            r = await self.http.post(
                f"{self.enqueuer}/api/contacts/import",
                content=csv.encode(),
                headers={**key, "Content-Type": "text/csv"},
            )
            assert r.status_code == 200, r.text
            self.tenants.append(tenant)
        r = await self.http.patch(f"{self.sim}/sim/config", json=PROVIDER)
        assert r.status_code == 200, r.text

    async def campaigns_of(self, tenant: Tenant) -> None:
        """A new campaign every 20-50 s: an inline audience (100-1,000 numbers) or every contact; sent at
        once or scheduled 5-40 s ahead."""
        while self.running():
            await self.pause(20, 50)
            if not self.running():
                return
            body: dict[str, Any] = {
                "name": f"Soak {self.traffic.counts['created']}",
                "text": self.rng.choice(TEXTS),
            }
            if self.rng.random() < 0.25:
                body["audience"] = {"all": True}
            else:
                start = tenant.first_phone + CONTACTS + self.rng.randrange(0, 50_000)
                phones = greek_mobiles(start, self.rng.randrange(100, 1000))
                body["recipients"] = [{"phone": p, "firstName": f"Guest{n}"} for n, p in enumerate(phones)]
            scheduled = self.rng.random() < 0.3
            if scheduled:
                body["scheduledAt"] = (
                    datetime.now(UTC) + timedelta(seconds=self.rng.uniform(5, 40))
                ).isoformat()
            r = await self.http.post(f"{self.enqueuer}/api/campaigns", json=body, headers=tenant.key)
            if not self.traffic.answer("created", r, (201,)):
                continue
            campaign = r.json()["id"]
            self.traffic.campaigns[campaign] = tenant
            if scheduled:
                self.traffic.counts["scheduled"] += 1
            else:
                r = await self.http.post(
                    f"{self.enqueuer}/api/campaigns/{campaign}/enqueue", headers=tenant.key
                )
                self.traffic.answer("enqueued", r)

    async def with_status(self, wanted: str) -> list[str]:
        """Campaigns of every tenant in status `wanted` (the newest 200 of each)."""
        found: list[str] = []
        for tenant in self.tenants:
            r = await self.http.get(
                f"{self.enqueuer}/api/campaigns",
                params={"status": wanted, "pageSize": 200},
                headers=tenant.key,
            )
            if self.traffic.answer("listed", r):
                found += [c["id"] for c in r.json()["items"]]
        return found

    async def pauses(self) -> None:
        """Every 20-40 s: pause a sending campaign; 5-15 s later resume it (or, one time in five, cancel)."""
        while self.running():
            await self.pause(20, 40)
            sending = await self.with_status("sending")
            if not sending or not self.running():
                continue
            campaign = self.rng.choice(sending)
            key = self.traffic.campaigns[campaign].key
            r = await self.http.post(f"{self.enqueuer}/api/campaigns/{campaign}/pause", headers=key)
            if not self.traffic.answer("paused", r):
                continue
            await asyncio.sleep(self.rng.uniform(5, 15))
            if self.rng.random() < 0.2:
                r = await self.http.post(f"{self.enqueuer}/api/campaigns/{campaign}/cancel", headers=key)
                self.traffic.answer("cancelled", r)
            else:
                r = await self.http.post(f"{self.enqueuer}/api/campaigns/{campaign}/resume", headers=key)
                self.traffic.answer("resumed", r, (200, 202))

    async def retries(self) -> None:
        """Every 30-60 s: retry the failed recipients of a finished campaign (at most twice each); every
        third round the simulator's rejection rule flips, so that part of the next retries get through."""
        tried: Counter[str] = Counter()
        rounds = 0
        while self.running():
            await self.pause(30, 60)
            rounds += 1
            if rounds % 3 == 0:
                self.reject_share = 0.01 if self.reject_share == 0.02 else 0.02
                r = await self.http.patch(f"{self.sim}/sim/config", json={"reject_share": self.reject_share})
                assert r.status_code == 200, r.text
                self.traffic.counts["rejection rule changed"] += 1
            done = [c for c in await self.with_status("completed") if tried[c] < 2]
            if not done or not self.running():
                continue
            campaign = self.rng.choice(done)
            tried[campaign] += 1
            key = self.traffic.campaigns[campaign].key
            r = await self.http.post(f"{self.enqueuer}/api/campaigns/{campaign}/retry-failed", headers=key)
            self.traffic.answer("retried", r)

    async def bursts(self) -> None:
        """Every 90-150 s: hold delivery reports back for 20 s, then release them all at once."""
        while self.running():
            await self.pause(90, 150)
            if not self.running():
                return
            await self.http.patch(
                f"{self.sim}/sim/config", json={"dlr_delay_ms": 60_000, "dlr_batch_size": 1000}
            )
            await asyncio.sleep(20)
            await self.http.patch(f"{self.sim}/sim/config", json={"dlr_delay_ms": 500, "dlr_batch_size": 300})
            r = await self.http.post(f"{self.sim}/sim/flush-dlr")
            if r.status_code == 502:  # the webhook pushed back (503): the simulator retries, nothing is lost
                self.traffic.counts["report bursts pushed back"] += 1
            elif self.traffic.answer("report bursts", r):
                self.traffic.counts["reports in bursts"] += int(r.json()["sent"])

    async def wind_down(self) -> None:
        """Nothing left paused: resume what is (scheduled campaigns start on their own)."""
        for campaign in await self.with_status("paused"):
            key = self.traffic.campaigns[campaign].key
            r = await self.http.post(f"{self.enqueuer}/api/campaigns/{campaign}/resume", headers=key)
            self.traffic.answer("resumed", r, (200, 202))

    def table(self) -> str:
        rows: list[tuple[str, object]] = [(k, v) for k, v in sorted(self.traffic.counts.items())]
        rows += [("unexpected answer", u) for u in self.traffic.unexpected[:10]]
        return table("traffic", ("what", "count"), rows)


async def every(period: float, until: Callable[[], bool], action: Callable[[], Awaitable[None]]) -> None:
    while until():
        started = time.monotonic()
        await action()
        await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))


@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60) + 1800)
async def test_soak_mixed_traffic_keeps_every_invariant_each_minute(stack: LocalStack) -> None:
    rng = random.Random(30)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=120.0) as http:
        work = Workload(stack, http, rng, deadline=started + MINUTES * 60)
        inv = Invariants(stack, http)
        chaos = Chaos(stack, http, rng)  # only for the operator's resolutions and their tally
        minutes: list[tuple[int, list[Row], float]] = []
        final: list[Row] = []

        async def check() -> None:
            mark = time.monotonic()
            rows = await inv.check_all(settled=False)
            minutes.append((len(minutes) + 1, rows, time.monotonic() - mark))
            held = sum(r.held for r in rows)
            print(
                f"minute {len(minutes)}: {held}/{len(rows)} invariants held in {time.monotonic() - mark:.1f} s"
            )
            for r in rows:
                if not r.held:
                    print(f"  VIOLATED {r.name}: {r.detail}")

        async def operate() -> None:
            await resolve_ambiguous(chaos, inv, REJECT_EVERY, rounds=1, must_finish=False)

        try:
            await work.set_up()
            actors = [
                *(work.campaigns_of(t) for t in work.tenants),
                work.pauses(),
                work.retries(),
                work.bursts(),
                every(CHECK_EVERY_S, work.running, check),
                every(60.0, work.running, operate),
            ]
            await asyncio.gather(*actors)
            await work.wind_down()
            await calm_down(chaos)
            await finish_runs(chaos, inv, REJECT_EVERY, timeout=600)
            final = await inv.check_all(settled=True)
            final.append(
                Row(
                    "every command answered",
                    not work.traffic.unexpected,
                    f"{sum(work.traffic.counts.values())} commands; {len(work.traffic.unexpected)} unexpected answers",
                )
            )
        finally:
            print(work.table())
            print(chaos.fault_table())
            print(
                table(
                    "invariants each minute",
                    ("minute", "held", "seconds", "violated"),
                    [
                        (
                            m,
                            f"{sum(r.held for r in rows)}/{len(rows)}",
                            f"{s:.1f}",
                            "; ".join(r.name for r in rows if not r.held) or "-",
                        )
                        for m, rows, s in minutes
                    ],
                )
            )
            if final:
                print(invariant_table(f"invariants after {MINUTES:g} minutes, settled", final))
            print(f"logs: {stack.dir}")
    violated = [r for _, rows, _ in minutes for r in rows if not r.held] + [r for r in final if not r.held]
    assert minutes, "no minute was checked"
    assert final, "the final check did not run"
    assert not violated, invariant_table("violated", violated)
