"""Control routes for tests and benchmarks under /sim: counters, sends per phone, config, reset, flush."""

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mitto_sim.settings import ConfigError
from mitto_sim.web import json_response, simulator_of


async def stats(request: Request) -> Response:
    return json_response(simulator_of(request).stats_view())


async def sends(request: Request) -> Response:
    campaign = request.query_params.get("campaign")
    if campaign is None:
        return json_response({"error": "query parameter 'campaign' is required"}, 400)
    summary = simulator_of(request).sends_of(campaign)
    return json_response(
        {
            "campaign": summary.campaign,
            "phones": summary.phones,
            "sends": summary.sends,
            "max_per_phone": summary.max_per_phone,
            "duplicates": [{"phone": phone, "count": count} for phone, count in summary.duplicates],
        }
    )


async def sends_to_phone(request: Request) -> Response:
    params = request.path_params
    return json_response({"count": simulator_of(request).send_count(params["campaign"], params["phone"])})


async def get_config(request: Request) -> Response:
    return json_response(simulator_of(request).config.model_dump())


async def patch_config(request: Request) -> Response:
    try:
        patch = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return json_response({"error": f"invalid JSON: {exc}"}, 400)
    try:
        config = simulator_of(request).update_config(patch)
    except ConfigError as exc:
        return json_response({"error": str(exc)}, 400)
    return json_response(config.model_dump())


async def reset(request: Request) -> Response:
    simulator_of(request).reset()
    return json_response({"status": "reset"})


async def flush_dlr(request: Request) -> Response:
    """Send every pending report now. 502 when the webhook failed; the rest stays queued."""
    result = await simulator_of(request).dlr.flush()
    body = {"sent": result.sent, "pending": result.pending, "error": result.error}
    return json_response(body, 200 if result.error is None else 502)


def control_routes() -> list[Route]:
    return [
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/sends", sends, methods=["GET"]),
        Route("/sim/sends/{campaign}/{phone}", sends_to_phone, methods=["GET"]),
        Route("/sim/config", get_config, methods=["GET"]),
        Route("/sim/config", patch_config, methods=["PATCH"]),
        Route("/sim/reset", reset, methods=["POST"]),
        Route("/sim/flush-dlr", flush_dlr, methods=["POST"]),
    ]
