"""Helpers for tests that talk to a simulator over HTTP: serve an app on a free port, record webhooks.

For other services' integration and end-to-end tests as much as for the simulator's own.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@asynccontextmanager
async def serving(app: Starlette, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run `app` with uvicorn on a free port of `host` inside the current loop; yields its base URL."""
    config = uvicorn.Config(app, host=host, port=0, http="httptools", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    # uvicorn exposes readiness only as a flag.
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


class WebhookRecorder:
    """A webhook receiver that keeps every body and header set it got, and can be told to fail."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.failures_left = 0
        self.failure_status = 503
        self.app = Starlette(routes=[Route("/dlr", self._receive, methods=["POST"])])

    def fail_next(self, count: int, status: int = 503) -> None:
        self.failures_left, self.failure_status = count, status

    def clear(self) -> None:
        self.bodies.clear()
        self.headers.clear()
        self.failures_left = 0

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Every report received with a 2xx answer, in arrival order, batches flattened."""
        flat: list[dict[str, Any]] = []
        for body in self.bodies:
            flat.extend(body if isinstance(body, list) else [body])
        return flat

    async def _receive(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if self.failures_left > 0:
            self.failures_left -= 1
            return Response(status_code=self.failure_status)
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return Response(status_code=202)
