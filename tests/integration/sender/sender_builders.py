"""Builders and a ledger harness shared by the sender's integration tests (no test in this module)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from mitto_sim.app import create_app as create_sim
from mitto_sim.settings import SimSettings
from mitto_sim.testing import serving
from sender.intake import decode_batch
from sender.limits import TrafficLimits
from sender.locks import BatchLocks
from sender.mitto import MittoClient
from sender.outcomes import Cause
from sender.resolution import Resolver
from sender.sending import BatchSender
from sender.settings import SenderSettings

from shared import db
from shared.events import BatchQueued, BatchRecipient, Event, MessageType, decode, encode, envelope_for
from shared.infra.postgres import PostgresServer, resolve_server

REPO = Path(__file__).resolve().parents[3]
SIM_KEY = "sim-key"


def phones(start: int, count: int) -> list[str]:
    return [f"+30697{n:07d}" for n in range(start, start + count)]


def a_batch(
    campaign_id: str,
    numbers: list[str],
    *,
    run_token: str = "run-1",
    index: int = 0,
    first_id: int = 1,
    template: str = "Hi {{first_name}}, 20% off today!",
    message_type: MessageType = MessageType.MARKETING,
    tenant_id: str = "tenant-1",
) -> tuple[Cause, BatchQueued, bytes]:
    batch = BatchQueued(
        batch_id=f"{campaign_id}:{run_token}:{index}",
        run_token=run_token,
        batch_no=index,
        sender_id="Shop",
        template=template,
        message_type=message_type,
        recipients=tuple(
            BatchRecipient(id=first_id + i, phone=p, values={"first_name": f"Guest{i}"})
            for i, p in enumerate(numbers)
        ),
    )
    raw = encode(
        envelope_for(batch, occurred_at=datetime.now(UTC), tenant_id=tenant_id, campaign_id=campaign_id)
    )
    cause, decoded = decode_batch(raw)
    return cause, decoded, raw


def new_campaign() -> str:
    return str(uuid.uuid4())


class Metrics:
    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []
        self.calls: list[str] = []
        self.retries: list[str] = []

    def batch_done(self, status: str, recipients: int) -> None:
        self.done.append((status, recipients))

    def provider_call(self, outcome: str, seconds: float) -> None:
        self.calls.append(outcome)

    def retried(self, reason: str) -> None:
        self.retries.append(reason)


@dataclass
class Ledger:
    """A migrated database, a pool on the sender schema, and a simulator; senders are built per test."""

    server: PostgresServer
    name: str
    url: str
    pool: asyncpg.Pool
    sim_url: str
    sim: httpx.AsyncClient
    opened: list[Any] = field(default_factory=list)

    def settings(self, **overrides: Any) -> SenderSettings:
        values: dict[str, Any] = {
            "database_url": self.url,
            "mitto_base_url": self.sim_url,
            "mitto_api_key": SIM_KEY,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.2,
            **overrides,
        }
        return SenderSettings(**values)

    def sender(
        self, settings: SenderSettings | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> tuple[BatchSender, Resolver, Metrics]:
        s = settings or self.settings()
        mitto = MittoClient(
            s.mitto_base_url,
            s.mitto_api_key,
            read_timeout=s.mitto_read_timeout_s,
            connect_timeout=s.mitto_connect_timeout_s,
            transport=transport,
        )
        locks = BatchLocks(s.database_url, wait_step_s=0.05)
        limits = TrafficLimits(
            s.mitto_messages_per_second, s.mitto_burst_seconds, s.max_concurrent_bulk_calls
        )
        metrics = Metrics()
        sender = BatchSender(lambda: self.pool, mitto, s, metrics, locks, limits)
        self.opened += [mitto, locks]
        return sender, Resolver(lambda: self.pool, sender, locks, mitto), metrics

    async def sim_config(self, **patch: Any) -> None:
        (await self.sim.patch("/sim/config", json=patch)).raise_for_status()

    async def sim_get(self, path: str) -> dict[str, Any]:
        r = await self.sim.get(path)
        r.raise_for_status()
        return dict(r.json())

    async def outcomes(self, campaign_id: str) -> list[tuple[str, Event, str]]:
        """(type, event, event id) of every outbox row of the campaign, in order."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT value FROM outbox WHERE key = $1 ORDER BY id", campaign_id.encode()
            )
        out = []
        for r in rows:
            envelope, event = decode(r["value"])
            out.append((envelope.type, event, envelope.event_id))
        return out

    async def batch_row(self, batch_id: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM send_batches WHERE batch_id = $1", batch_id)
        assert row is not None
        return row

    async def close_senders(self) -> None:
        for thing in self.opened:
            await (thing.aclose() if isinstance(thing, MittoClient) else thing.close())
        self.opened.clear()


@asynccontextmanager
async def ledger(label: str) -> AsyncIterator[Ledger]:
    server = await resolve_server(REPO / ".run" / "pgdata")
    name = f"sender_{label}_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    await db.apply_migrations(url, "sender", ["shared", "sender"])
    pool = await db.create_pool(url, "sender", max_size=10)
    sim_settings = SimSettings(api_key=SIM_KEY, dlr_delay_ms=3_600_000)
    try:
        async with serving(create_sim(sim_settings)) as sim_url, httpx.AsyncClient(base_url=sim_url) as sim:
            harness = Ledger(server, name, url, pool, sim_url, sim)
            try:
                yield harness
            finally:
                await harness.close_senders()
    finally:
        await pool.close()
        await server.drop_database(name)
        server.stop()


class ScriptedTransport(httpx.AsyncBaseTransport):
    """Forwards to the simulator, except where a script says otherwise for the next sends:
    an int answers that status without forwarding (429 carries Retry-After: 0), "refused" raises
    ConnectError, "accepted-then-timeout" forwards then raises ReadTimeout, "accepted-then-500" forwards
    then answers 500, "drop-last-result" forwards then removes the last result of the answer.
    Status lookups (GET) always go through."""

    def __init__(self, script: list[int | str | None] | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.script = list(script or [])
        self.sends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return await self.inner.handle_async_request(request)
        self.sends += 1
        step = self.script.pop(0) if self.script else None
        if isinstance(step, int):
            headers = {"Retry-After": "0"} if step == 429 else {}
            return httpx.Response(step, headers=headers, json={"error": f"scripted {step}"}, request=request)
        if step == "refused":
            raise httpx.ConnectError("scripted: connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if step == "accepted-then-timeout":
            raise httpx.ReadTimeout("scripted: no answer in time", request=request)
        if step == "accepted-then-500":
            return httpx.Response(500, json={"error": "scripted"}, request=request)
        if step == "drop-last-result":
            body = response.json()
            body["messages"] = body["messages"][:-1]
            return httpx.Response(200, json=body, request=request)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content, request=request
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
