"""HTTP face of the simulator: Mitto's API B send and lookup routes, plus health and metrics.

Raw Starlette routes and orjson: a bulk call carries thousands of items and must cost little more than
parsing them. Fault injection order per send call: 429 (nothing stored), 500 (stored first when
`http_500_after_accept`), timeout (stored, then the answer waits `timeout_seconds`), else 200.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mitto_sim.control import control_routes
from mitto_sim.domain import Fault
from mitto_sim.intake import MalformedRequest, parse_bulk, parse_single
from mitto_sim.settings import SimConfig, SimSettings
from mitto_sim.simulator import Simulator
from mitto_sim.web import json_response, simulator_of
from mitto_sim.webhook import WebhookClient

API = "/api/v1.1/Messages"


async def send_bulk(request: Request) -> Response:
    return await _send(request, "bulk", lambda body, config: parse_bulk(body, config.max_bulk_items))


async def send_single(request: Request) -> Response:
    return await _send(request, "single", lambda body, _: parse_single(body))


async def _send(request: Request, endpoint: str, parse: Callable[[bytes, SimConfig], list[Any]]) -> Response:
    sim = simulator_of(request)
    response = await _answer_send(sim, request, endpoint, parse)
    sim.metrics.requests.labels(endpoint, str(response.status_code)).inc()
    return response


async def _answer_send(
    sim: Simulator, request: Request, endpoint: str, parse: Callable[[bytes, SimConfig], list[Any]]
) -> Response:
    if not sim.authorised(request.headers.get("x-mitto-api-key")):
        return json_response({"error": "invalid or missing X-Mitto-API-Key"}, 401)
    config = sim.config  # one config for the whole call, even if patched meanwhile
    try:
        items = parse(await request.body(), config)
    except MalformedRequest as exc:
        return json_response({"error": str(exc)}, 400)
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    fault = sim.choose_fault(config)
    if fault is Fault.HTTP_429:
        headers = {"Retry-After": str(config.retry_after_seconds)}
        return json_response({"error": "too many requests"}, 429, headers)
    if fault is Fault.HTTP_500 and not config.http_500_after_accept:
        return json_response({"error": "internal server error"}, 500)
    try:
        results = sim.accept(items, config)
    except MalformedRequest as exc:
        return json_response({"error": str(exc)}, 400)
    if fault is Fault.HTTP_500:
        return json_response({"error": "internal server error"}, 500)
    if fault is Fault.TIMEOUT:
        await asyncio.sleep(config.timeout_seconds)
    if endpoint == "bulk":
        body = b'{"bulkId":"' + str(uuid.uuid4()).encode() + b'","messages":' + results.json() + b"}"
        return Response(body, media_type="application/json")
    result = results.as_dicts()[0]
    if "error" in result:
        return json_response({"error": result["error"]}, 400)
    return json_response({"messages": [result]})


async def lookup_message(request: Request) -> Response:
    sim = simulator_of(request)
    if not sim.authorised(request.headers.get("x-mitto-api-key")):
        return json_response({"error": "invalid or missing X-Mitto-API-Key"}, 401)
    found = sim.lookup(request.path_params["message_id"])
    if found is None:
        return json_response({"error": "message not found"}, 404)
    return json_response(found)


async def healthz(_: Request) -> Response:
    return json_response({"status": "ok"})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(simulator_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: SimSettings) -> Starlette:
    """Build a simulator; the webhook client and report dispatcher start with the app's lifespan."""
    sim = Simulator(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        client = WebhookClient(connect_timeout_s=2.0, timeout_s=10.0)
        sim.dlr.start(client)
        try:
            yield
        finally:
            await sim.dlr.stop()
            client.close()

    routes = [
        Route(f"{API}/sendmessagesbulk", send_bulk, methods=["POST"]),
        Route(f"{API}/send", send_single, methods=["POST"]),
        Route(f"{API}/{{message_id}}", lookup_message, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *control_routes(),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sim = sim
    return app
