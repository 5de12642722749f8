"""Faults injected into a running LocalStack and the record of them; the end of a run under faults: the
faults switched off, the stack quiet, the ambiguous batches settled through the sender's operator endpoint
(resent only when the simulator shows that none of the batch reached it), every run finished.

Shared by the chaos runs and the soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from deploy.local.stack import SERVICES, LocalStack
from tests.invariants import Invariants, quiet, table
from tests.support import eventually

# The simulator's faults and delivery-report disorder, and the same switched off.
CALM: dict[str, Any] = {
    "http_429_share": 0.0,
    "http_500_share": 0.0,
    "timeout_share": 0.0,
    "latency_ms": 0.0,
    "dlr_duplicate_share": 0.0,
    "dlr_out_of_order_share": 0.0,
    "dlr_sent_first_share": 0.0,
    "dlr_jitter_ms": 0.0,
}
PROBES = 20  # members of an ambiguous batch looked up at the simulator before deciding fail or resend


@dataclass
class Injected:
    at: float  # seconds since the run started
    fault: str
    target: str
    seconds: float  # how long the target was gone (a kill: until it answered /readyz again)


@dataclass
class Chaos:
    """Injects faults one at a time and keeps the list. A service that dies without being killed is
    restarted by `revive` and recorded: a finding, never hidden."""

    stack: LocalStack
    http: httpx.AsyncClient
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    injected: list[Injected] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    resolutions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    restarting: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def _record(self, fault: str, target: str, since: float) -> None:
        now = time.monotonic()
        self.injected.append(Injected(since - self.started, fault, target, now - since))

    async def kill(self, service: str) -> None:
        """SIGKILL the service (no shutdown of any kind, whatever it is doing) and start it again in the
        background: other faults go on while it rejoins its consumer groups. A second kill of the same
        service waits until the first restart is ready."""
        previous = self.restarting.get(service)
        if previous is not None:
            await previous
        self.restarting[service] = asyncio.create_task(self._kill_and_restart(service))

    async def _kill_and_restart(self, service: str) -> None:
        since = time.monotonic()
        await asyncio.to_thread(self.stack.kill, service, signal.SIGKILL)
        await self.stack.restart(service)
        self._record("SIGKILL + restart", service, since)

    async def restarted(self) -> None:
        """Wait for every restart under way (a failed one raises here)."""
        tasks = list(self.restarting.values())
        self.restarting.clear()
        await asyncio.gather(*tasks)

    async def broker_unreachable(self, seconds: float) -> None:
        """SIGSTOP the broker: connections stay open and nothing answers, like a network partition."""
        await self.restarted()
        since = time.monotonic()
        self.stack.broker.pause()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.stack.broker.resume()
        self._record("broker unreachable", "broker", since)

    async def postgres_restart(self, outage: float) -> None:
        """Stop PostgreSQL like a crash (immediate: no checkpoint, recovery at start), keep it down for
        `outage` seconds, start it again on the same port."""
        assert self.stack.pg is not None
        server = self.stack.pg.embedded
        if server is None:
            pytest.fail("PostgreSQL can only be restarted when the stack started it (SMSFLOW_PG=embedded)")
        await self.restarted()
        since = time.monotonic()
        await asyncio.to_thread(server.stop, "immediate")
        await asyncio.sleep(outage)
        await server.start()
        self._record("PostgreSQL crash + restart", "postgres", since)

    async def misbehave(self, label: str, config: dict[str, Any]) -> None:
        """Change the simulator's faults while traffic flows (PATCH /sim/config)."""
        since = time.monotonic()
        r = await self.http.patch(f"{self.stack.url('mitto-sim')}/sim/config", json=config)
        assert r.status_code == 200, r.text
        self.injected.append(Injected(since - self.started, "simulator", label, 0.0))

    async def revive(self) -> None:
        """Restart every service process that exited although nobody killed it."""
        for name in SERVICES:
            busy = self.restarting.get(name)
            if name not in self.stack.options.services or (busy is not None and not busy.done()):
                continue
            for replica, proc in enumerate(self.stack.replicas[name]):
                popen = proc.popen
                if popen is not None and popen.poll() is not None:
                    self.exited.append(f"{proc.name} exited with {popen.returncode}")
                    await self.stack.restart(name, replica=replica)

    def fault_table(self) -> str:
        grouped: dict[tuple[str, str], list[Injected]] = defaultdict(list)
        for i in self.injected:
            grouped[(i.fault, i.target)].append(i)
        rows = []
        for (fault, target), items in sorted(grouped.items()):
            down = sum(i.seconds for i in items)
            when = ", ".join(f"{i.at:.0f}" for i in items[:8]) + (" ..." if len(items) > 8 else "")
            rows.append((fault, target, len(items), f"{down:.1f}", when))
        rows += [("exited on its own", e, 1, "-", "-") for e in self.exited]
        rows += [
            ("operator resolution", action, n, "-", "-") for action, n in sorted(self.resolutions.items())
        ]
        return table(
            "faults injected", ("fault", "target", "times", "seconds down", "at (s since start)"), rows
        )


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=120.0) as http:
        yield http


async def new_tenant(stack: LocalStack, http: httpx.AsyncClient, name: str, channel: str) -> dict[str, str]:
    r = await http.post(
        f"{stack.url('enqueuer')}/api/tenants",
        json={"name": name, "channel": channel, "credits": 50_000_000},
        headers={"X-Api-Key": stack.operator_key},
    )
    assert r.status_code == 201, r.text
    return {"X-Api-Key": r.json()["apiKey"]}


async def new_campaign(
    stack: LocalStack, http: httpx.AsyncClient, key: dict[str, str], phones: Sequence[str], **extra: Any
) -> str:
    recipients = [{"phone": p, "firstName": f"Guest{i % 997}"} for i, p in enumerate(phones)]
    body = {"name": "Chaos sale", "text": "Hi {{first_name}}, 20% off today!", "recipients": recipients}
    r = await http.post(f"{stack.url('enqueuer')}/api/campaigns", json={**body, **extra}, headers=key)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def batches_done(stack: LocalStack) -> tuple[int, int]:
    """(batches with an outcome, batches planned) over every run: the sender's progress."""
    conn = await asyncpg.connect(stack.database_url, timeout=5)
    try:
        planned = await conn.fetchval("SELECT coalesce(sum(batch_count), 0) FROM enqueuer.runs")
        done = await conn.fetchval("SELECT count(*) FROM sender.send_batches WHERE status <> 'claimed'")
        return int(done), int(planned)
    finally:
        await conn.close()


async def wait_progress(chaos: Chaos, fraction: float, timeout: float) -> None:
    """Until the sender has an outcome for `fraction` of the planned batches; reviving meanwhile any
    service that died on its own. A database that is down counts as no progress."""

    async def reached() -> bool:
        await chaos.revive()
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            done, planned = await batches_done(chaos.stack)
            return planned > 0 and done >= fraction * planned
        return False

    await eventually(reached, timeout=timeout, every=0.25, what=f"{fraction:.0%} of the batches sent")


async def resolve_ambiguous(
    chaos: Chaos, inv: Invariants, reject_every: int, *, rounds: int = 10, must_finish: bool = True
) -> None:
    """Settle every ambiguous batch as an operator would: look a sample of its recipients up at the
    simulator (the provider stores a bulk call whole or not at all; numbers divisible by `reject_every`
    it may refuse, so they tell little); resend when none reached it, fail otherwise. A batch of such numbers
    only (a retry of refused ones) is probed whole: the rule may have changed since, letting some through,
    and an operator with no evidence that nothing arrived must not resend (the soak once did: three phones
    sent twice). A resend refused because the campaign is paused or cancelled becomes a fail (a paused run
    cannot resume while it has ambiguous batches). Repeated until none is left (a resend can itself become
    ambiguous)."""
    sender, sim = chaos.stack.url("sender"), chaos.stack.url("mitto-sim")
    url = f"{sender}/api/operator/ambiguous-batches"
    for _ in range(rounds):
        listed = await inv.list_ambiguous()
        if not listed:
            return
        for b in listed:
            r = await chaos.http.get(f"{url}/{b['batchId']}", headers=inv.operator)
            if r.status_code in (404, 409):
                continue  # resolved meanwhile (a late provider answer)
            assert r.status_code == 200, r.text
            everyone = r.json()["members"]
            members = [m for m in everyone if int(m["phone"][1:]) % reject_every] or everyone
            counts = []
            for m in chaos.rng.sample(members, min(PROBES, len(members))):
                got = await chaos.http.get(f"{sim}/sim/sends/{b['campaignId']}/{m['phone']}")
                counts.append(got.json()["count"])
            action = "fail" if any(counts) else "resend"
            if any(counts) and not all(counts):
                chaos.resolutions["fail (partly stored!)"] += 1
            done = await chaos.http.post(
                f"{url}/{b['batchId']}/resolve", json={"action": action}, headers=inv.operator
            )
            if done.status_code == 409 and done.json()["code"] == "CAMPAIGN_STOPPED":
                action = "fail (campaign stopped)"
                done = await chaos.http.post(
                    f"{url}/{b['batchId']}/resolve", json={"action": "fail"}, headers=inv.operator
                )
            if done.status_code == 409 and done.json()["code"] in ("NOT_AMBIGUOUS", "BATCH_BUSY"):
                continue
            assert done.status_code == 200, done.text
            chaos.resolutions[f"{action} ({b['reason'] or 'ambiguous'})"[:70]] += 1
        await asyncio.sleep(2)
    if must_finish:
        pytest.fail(
            f"ambiguous batches left after {rounds} rounds of resolution: {await inv.list_ambiguous()}"
        )


async def runs_finished(stack: LocalStack) -> bool:
    conn = await asyncpg.connect(stack.database_url, timeout=5)
    try:
        open_runs = await conn.fetchval(
            "SELECT count(*) FROM enqueuer.runs WHERE reservation_open OR settled < batch_count"
        )
        busy = await conn.fetchval(
            """SELECT count(*) FROM enqueuer.campaigns
               WHERE status IN ('sending', 'scheduled') OR resume_requested_at IS NOT NULL"""
        )
        return int(open_runs) == 0 and int(busy) == 0
    finally:
        await conn.close()


async def calm_down(chaos: Chaos, timeout: float = 300.0) -> None:
    """Faults off and every service running; returns when nothing is in flight."""
    r = await chaos.http.patch(f"{chaos.stack.url('mitto-sim')}/sim/config", json=CALM)
    assert r.status_code == 200, r.text
    await chaos.restarted()
    await chaos.revive()
    await quiet(chaos.stack, timeout=timeout)


async def finish_runs(chaos: Chaos, inv: Invariants, reject_every: int, timeout: float = 300.0) -> None:
    """Resolve the ambiguous batches, then wait until every run has settled and the stack is quiet."""
    await resolve_ambiguous(chaos, inv, reject_every)

    async def finished() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return await runs_finished(chaos.stack)
        return False

    await eventually(finished, timeout=timeout, every=1.0, what="every run settled")
    await quiet(chaos.stack, timeout=timeout)
