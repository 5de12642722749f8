"""Status refresh against the Mitto simulator and a stand-in for the projector's candidates endpoint.

The stand-in serves exactly the contract the projector offers
(`GET /api/operator/refresh-candidates?olderThanMinutes=N&limit=L[&campaignId=..|&bulkId=..]`, operator key,
`{"items": [{"messageId", "campaignId", "tenantId", "sentAt"}]}`), so that the refresh is tested on its own;
the end-to-end test runs it against the real projector.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from dlr_ingest.app import create_app
from dlr_ingest.settings import DlrIngestSettings
from mitto_sim.app import create_app as create_sim
from mitto_sim.settings import SimSettings
from mitto_sim.testing import WebhookRecorder, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.config import KafkaSettings
from shared.events import DeliveryReported, decode
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import records_of

REPO = Path(__file__).resolve().parents[3]
OPERATOR = "op-refresh-key"
MITTO_KEY = "sim-key"


@dataclass
class FakeProjector:
    """Candidates by campaign and bulk, as the projector's read model would hold them."""

    items: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)

    async def candidates(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != OPERATOR:
            return JSONResponse({"code": "UNAUTHORIZED", "message": "operator key"}, status_code=401)
        q = dict(request.query_params)
        self.queries.append(q)
        found = [
            {k: v for k, v in i.items() if k != "bulkId"}
            for i in self.items
            if q.get("campaignId") in (None, i["campaignId"]) and q.get("bulkId") in (None, i["bulkId"])
        ]
        return JSONResponse({"items": found[: int(q["limit"])]})

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/operator/refresh-candidates", self.candidates)])


@dataclass
class World:
    dlr: str
    sim: str
    projector: FakeProjector
    recorder: WebhookRecorder
    broker: TansuBroker
    settings: DlrIngestSettings


@pytest_asyncio.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    projector = FakeProjector()
    recorder = WebhookRecorder()
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_refresh_{secrets.token_hex(4)}"
    with TansuBroker() as broker:
        async with (
            serving(projector.app) as projector_url,
            serving(recorder.app) as webhook_url,
            serving(create_sim(SimSettings(api_key=MITTO_KEY, seed=7))) as sim_url,
        ):
            settings = DlrIngestSettings(
                database_url=await server.create_database(name),
                kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
                operator_api_key=OPERATOR,
                projector_url=projector_url,
                mitto_base_url=sim_url,
                mitto_api_key=MITTO_KEY,
                refresh_max_limit=500,
            )
            async with httpx.AsyncClient(base_url=sim_url) as sim:
                config = {
                    "webhook_url": f"{webhook_url}/dlr",
                    "dlr_delay_ms": 3_600_000,  # reports only when the test flushes them
                    "dlr_failure_share": 0.5,
                }
                (await sim.patch("/sim/config", json=config)).raise_for_status()
            try:
                async with serving(create_app(settings)) as dlr_url:
                    yield World(dlr_url, sim_url, projector, recorder, broker, settings)
            finally:
                await server.drop_database(name)
                server.stop()


async def send(world: World, campaign: str, count: int) -> tuple[str, list[str]]:
    items = [
        {
            "trafficAccountId": "acc",
            "destination": f"+30694{secrets.randbelow(10**7):07d}",
            "sms": {"text": "Hi", "sender": "Shop"},
            "reference": f"{campaign}:{i}",
        }
        for i in range(count)
    ]
    async with httpx.AsyncClient(base_url=world.sim, headers={"X-Mitto-API-Key": MITTO_KEY}) as sim:
        r = await sim.post("/api/v1.1/Messages/sendmessagesbulk", json={"messages": items})
        r.raise_for_status()
        body = r.json()
    return body["bulkId"], [m["messageId"] for m in body["messages"]]


async def flush(world: World) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=world.sim) as sim:
        (await sim.post("/sim/flush-dlr")).raise_for_status()
    return {r["messageId"]: r["deliveryStatus"] for r in world.recorder.reports}


def candidates(world: World, campaign: str, tenant: str, bulk: str, ids: list[str]) -> None:
    world.projector.items += [
        {
            "messageId": m,
            "campaignId": campaign,
            "tenantId": tenant,
            "sentAt": "2026-01-01T00:00:00Z",
            "bulkId": bulk,
        }
        for m in ids
    ]


async def refreshed(world: World, message_id: str) -> list[tuple[str | None, str | None, DeliveryReported]]:
    out = []
    for _, value in await records_of(world.broker.bootstrap, "delivery.reports", message_id.encode()):
        envelope, event = decode(value)
        assert isinstance(event, DeliveryReported)
        out.append((envelope.tenant_id, envelope.campaign_id, event))
    return out


async def test_the_operator_endpoint_publishes_what_mitto_says_and_counts_what_it_does_not_know(
    world: World,
) -> None:
    campaign, tenant = f"c-{secrets.token_hex(3)}", f"t-{secrets.token_hex(3)}"
    bulk, finished = await send(world, campaign, 6)
    final = await flush(world)
    _, pending = await send(world, campaign, 2)  # no report yet: Mitto still says Sent
    candidates(world, campaign, tenant, bulk, [*finished, *pending, "NEVER-SENT-BY-US"])

    async with httpx.AsyncClient(base_url=world.dlr, headers={"X-Api-Key": OPERATOR}, timeout=60) as http:
        r = await http.post(
            "/api/operator/refresh", json={"olderThanMinutes": 15, "campaignId": campaign, "limit": 50}
        )
    assert r.status_code == 200, r.text
    summary = r.json()
    assert world.projector.queries[-1] == {"olderThanMinutes": "15", "limit": "50", "campaignId": campaign}
    assert {
        k: summary[k]
        for k in ("candidates", "lookedUp", "published", "final", "nonFinal", "notFound", "errors")
    } == {
        "candidates": 9,
        "lookedUp": 8,
        "published": 8,
        "final": 6,
        "nonFinal": 2,
        "notFound": 1,
        "errors": 0,
    }
    for m in finished:
        ((t, c, event),) = await refreshed(world, m)
        assert (t, c, event.source, event.raw_status) == (tenant, campaign, "refresh", final[m])
        assert event.status.value == ("delivered" if final[m] == "Delivered" else "failed")
    for m in pending:
        ((_, _, event),) = await refreshed(world, m)
        assert (event.raw_status, event.status.value) == ("Sent", "sent")
    assert await refreshed(world, "NEVER-SENT-BY-US") == []


async def test_the_operator_endpoint_wants_the_operator_key_and_one_scope(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.dlr, timeout=60) as http:
        r = await http.post("/api/operator/refresh", json={"olderThanMinutes": 5})
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")
        r = await http.post(
            "/api/operator/refresh", json={"olderThanMinutes": 5}, headers={"X-Api-Key": "wrong"}
        )
        assert r.status_code == 401
        key = {"Authorization": f"Bearer {OPERATOR}"}
        r = await http.post(
            "/api/operator/refresh",
            json={"olderThanMinutes": 5, "campaignId": "a", "bulkId": "b"},
            headers=key,
        )
        assert (r.status_code, r.json()["code"]) == (400, "CONFLICTING_SCOPE")
        r = await http.post("/api/operator/refresh", json={"olderThanMinutes": -1}, headers=key)
        assert (r.status_code, r.json()["code"]) == (400, "VALIDATION_ERROR")
        r = await http.post("/api/operator/refresh", json={"olderThanMinutes": 5, "limit": 501}, headers=key)
        assert (r.status_code, r.json()["code"]) == (400, "LIMIT_TOO_HIGH")


async def test_the_command_refreshes_one_bulk_and_prints_its_summary(world: World) -> None:
    campaign, tenant = f"c-{secrets.token_hex(3)}", f"t-{secrets.token_hex(3)}"
    bulk, ids = await send(world, campaign, 3)
    other_bulk, others = await send(world, campaign, 2)
    final = await flush(world)
    candidates(world, campaign, tenant, bulk, ids)
    candidates(world, campaign, tenant, other_bulk, others)
    s = world.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MITTO_", "PROJECTOR_"))},
        "KAFKA_BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "PROJECTOR_URL": s.projector_url,
        "MITTO_BASE_URL": s.mitto_base_url,
        "MITTO_API_KEY": MITTO_KEY,
        "OPERATOR_API_KEY": OPERATOR,
        "LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dlr_ingest", "refresh", "--older-than-minutes", "30", "--bulk-id", bulk, "--limit", "10",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    summary = orjson.loads(out.splitlines()[-1])
    assert (summary["candidates"], summary["published"], summary["final"]) == (3, 3, 3)
    assert world.projector.queries[-1] == {"olderThanMinutes": "30", "limit": "10", "bulkId": bulk}
    for m in ids:
        ((_, _, event),) = await refreshed(world, m)
        assert (event.source, event.raw_status) == ("refresh", final[m])
    for m in others:
        assert await refreshed(world, m) == []


async def test_the_command_fails_clearly_when_the_projector_is_unreachable(world: World) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MITTO_", "PROJECTOR_"))},
        "KAFKA_BOOTSTRAP_SERVERS": world.settings.kafka.bootstrap_servers,
        "PROJECTOR_URL": "http://127.0.0.1:9",
        "OPERATOR_API_KEY": OPERATOR,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dlr_ingest", "refresh", "--older-than-minutes", "5",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 1
    assert orjson.loads(err.splitlines()[-1])["code"] == "PROJECTOR_UNAVAILABLE"
