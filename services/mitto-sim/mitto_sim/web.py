"""Small helpers shared by the route modules."""

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from mitto_sim.simulator import Simulator


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


def simulator_of(request: Request) -> Simulator:
    sim: Simulator = request.app.state.sim
    return sim
