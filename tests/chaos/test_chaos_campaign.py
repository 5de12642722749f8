"""Chaos: a large campaign (and a small scheduled one of the other channel) while every service is
SIGKILLed and restarted at random moments, PostgreSQL crashes and comes back once, the broker is
unreachable once, and the simulator answers 429s, 500s (before and after storing the batch) and timeouts
and sends duplicate, early and late delivery reports.

Afterwards the stack is left to go quiet and every invariant of the architecture guide is checked twice:
with the ambiguous batches still open (they must be listed, and the counts must add up with them), and
after an operator settled each one through the sender's endpoint (resent only when the simulator shows
none of it arrived) and every run finished. The tables of faults and invariants are printed (pytest -s).

`make test` runs a short case (12,000 recipients, two kills per service, a 5 s broker outage);
`make chaos` the full one (100,000 recipients, twenty kills per service, a 30 s broker outage).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.stack import SERVICES, LocalStack, StackOptions
from tests.chaos.chaos_harness import (
    Chaos,
    calm_down,
    finish_runs,
    http_client,
    new_campaign,
    new_tenant,
    wait_progress,
)
from tests.invariants import Invariants, Row, invariant_table
from tests.support import greek_mobiles

REJECT_EVERY = 100  # the simulator's reject_share 0.01: every number divisible by 100

# Delivery-report disorder from the start; the provider's faults change in phases while the campaign runs.
DISORDER: dict[str, Any] = {
    "http_429_share": 0.1,
    "dlr_duplicate_share": 0.05,
    "dlr_out_of_order_share": 0.05,
    "dlr_sent_first_share": 0.05,
    "dlr_failure_share": 0.03,
    "dlr_jitter_ms": 1500,
    "dlr_alt_spelling_share": 0.1,
}
PHASES: list[tuple[str, tuple[float, float], dict[str, Any]]] = [
    (
        "500 after storing, timeouts",
        (0.1, 0.3),
        {
            "http_500_share": 0.04,
            "http_500_after_accept": True,
            "timeout_share": 0.03,
            "timeout_seconds": 2.5,
        },
    ),
    ("500 before storing, slow answers", (0.35, 0.55), {"http_500_after_accept": False, "latency_ms": 250}),
    ("timeouts only", (0.6, 0.8), {"http_500_share": 0.0, "timeout_share": 0.06, "latency_ms": 30}),
]


@dataclass(frozen=True)
class Scale:
    recipients: int
    scheduled: int  # recipients of the second tenant's scheduled campaign
    batch_size: int
    kills_per_service: int
    broker_outage_s: float
    postgres_outage_s: float
    messages_per_second: int  # the sender's pace: the campaign must outlast the faults
    seed: int


SHORT = Scale(12_000, 1_000, 500, 2, 5.0, 2.0, 220, 8)
FULL = Scale(100_000, 5_000, 1_000, 20, 30.0, 5.0, 300, 100)


@pytest.fixture
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalStack]:
    scale: Scale = request.param
    options = StackOptions(
        batch_size=scale.batch_size,
        run_dir=tmp_path,  # its own PostgreSQL data directory
        sim={
            "seed": str(scale.seed),
            "reject_share": "0.01",
            "latency_ms": "30",
            "retry_after_seconds": "0",
            "dlr_delay_ms": "300",
            "dlr_batch_size": "200",
        },
        env={
            "sender": {
                "MITTO_READ_TIMEOUT_S": "1.5",
                "MAX_CONCURRENT_BULK_CALLS": "4",
                "BATCHES_PER_POLL": "8",
                "MAX_ATTEMPTS": "12",
                "BACKOFF_BASE_S": "0.05",
                "BACKOFF_MAX_S": "0.5",
                "MITTO_MESSAGES_PER_SECOND": str(scale.messages_per_second),
                "RESOLVER_INTERVAL_S": "2",
            },
            "enqueuer": {"LOOP_INTERVAL_S": "0.5"},
        },
    )
    s = LocalStack(options)
    # PostgreSQL must be one this process started, or it could not be restarted.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SMSFLOW_PG", "embedded")
        try:
            await s.start()
        except BaseException:
            await s.stop()
            raise
    try:
        yield s
    finally:
        await s.stop()


def timeline(scale: Scale, rng: random.Random) -> list[tuple[float, str, str]]:
    """(fraction of the batches sent, fault, target), in order."""
    events = [(rng.uniform(0.03, 0.95), "kill", s) for s in SERVICES for _ in range(scale.kills_per_service)]
    events.append((rng.uniform(0.2, 0.8), "broker", "broker"))
    events.append((rng.uniform(0.2, 0.8), "postgres", "postgres"))
    events += [(rng.uniform(*span), "sim", label) for label, span, _ in PHASES]
    return sorted(events)


async def inject(chaos: Chaos, scale: Scale, events: list[tuple[float, str, str]], timeout: float) -> None:
    phases = {label: config for label, _, config in PHASES}
    for fraction, fault, target in events:
        await wait_progress(chaos, fraction, timeout)
        await asyncio.sleep(chaos.rng.uniform(0.0, 0.5))
        if fault == "kill":
            await chaos.kill(target)
        elif fault == "broker":
            await chaos.broker_unreachable(scale.broker_outage_s)
        elif fault == "postgres":
            await chaos.postgres_restart(scale.postgres_outage_s)
        else:
            await chaos.misbehave(target, phases[target])
    await chaos.restarted()


async def campaign_summary(http: httpx.AsyncClient, stack: LocalStack, campaigns: dict[str, str]) -> Row:
    parts = []
    ok = True
    for label, cid in campaigns.items():
        r = await http.get(
            f"{stack.url('projector')}/api/campaigns/{cid}/status", headers={"X-Api-Key": stack.operator_key}
        )
        body = r.json()
        s = body["stats"]
        ok = ok and body["campaign"]["status"] == "completed"
        parts.append(
            f"{label}: {body['campaign']['status']}, {s['total']} = {s['sent']} sent + {s['failed']} failed"
            f" + {s['ambiguous']} ambiguous + {s['queued']} queued, {s['delivered']} delivered"
        )
    return Row("runs finish", ok, "; ".join(parts))


async def run_chaos(stack: LocalStack, scale: Scale) -> None:
    rng = random.Random(scale.seed)
    started = time.monotonic()
    async with http_client() as http:
        chaos = Chaos(stack, http, rng)
        inv = Invariants(stack, http)
        before: list[Row] = []
        after: list[Row] = []
        try:
            retail = await new_tenant(stack, http, "Chaos retail", "retail")
            shopify = await new_tenant(stack, http, "Chaos shop", "shopify")
            campaigns = {
                "retail": await new_campaign(stack, http, retail, greek_mobiles(5_000_000, scale.recipients))
            }
            due = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10))
            campaigns["shopify (scheduled)"] = await new_campaign(
                stack, http, shopify, greek_mobiles(6_000_000, scale.scheduled), scheduledAt=due
            )
            await chaos.misbehave("disorder and 429s", DISORDER)
            r = await http.post(
                f"{stack.url('enqueuer')}/api/campaigns/{campaigns['retail']}/enqueue", headers=retail
            )
            assert r.status_code == 200, r.text

            events = timeline(scale, rng)
            await inject(chaos, scale, events, timeout=max(300.0, scale.recipients / 50))
            await wait_progress(chaos, 1.0, timeout=max(300.0, scale.recipients / 50))
            sending_ended = time.monotonic() - started
            await calm_down(chaos)

            before = [
                await inv.no_double_send(),
                await inv.reports_projected(settled=True),
                await inv.credits_balance(settled=False),
                await inv.counts_add_up(settled=True),
                await inv.dead_letters(),
                await inv.ambiguous_listed(),
            ]
            await finish_runs(chaos, inv, REJECT_EVERY)
            after = [*await inv.check_all(settled=True), await campaign_summary(http, stack, campaigns)]
            after.append(
                Row(
                    "services survived",
                    not chaos.exited,
                    f"{len(chaos.injected)} faults; sending ended at {sending_ended:.0f} s; "
                    f"run took {time.monotonic() - started:.0f} s"
                    + (f"; exited on their own: {chaos.exited}" if chaos.exited else ""),
                )
            )
        finally:
            await asyncio.gather(*chaos.restarting.values(), return_exceptions=True)
            print(chaos.fault_table())
            if before:
                print(invariant_table("invariants with the ambiguous batches still open", before))
            if after:
                print(invariant_table("invariants after the operator settled them", after))
            print(f"logs: {stack.dir}")
    failed = [r for r in (*before, *after) if not r.held]
    assert not failed, invariant_table("violated", failed)


@pytest.mark.timeout(600)  # about two minutes on an idle machine; room for a busy one
@pytest.mark.parametrize("stack", [SHORT], indirect=True, ids=["short"])
async def test_chaos_short_campaign_keeps_every_invariant(stack: LocalStack) -> None:
    await run_chaos(stack, SHORT)


@pytest.mark.chaos
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("stack", [FULL], indirect=True, ids=["full"])
async def test_chaos_hundred_thousand_recipients_keep_every_invariant(stack: LocalStack) -> None:
    await run_chaos(stack, FULL)
