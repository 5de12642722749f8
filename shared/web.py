"""HTTP pieces every service shares: API errors with stable codes, request ids, health, readiness, metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ReadinessCheck = Callable[[], Awaitable[bool]]


class ApiError(Exception):
    """An answer to bad input or a refused command: HTTP status, stable code, plain message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_body(request: Request, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "requestId": getattr(request.state, "request_id", None),
        **extra,
    }


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


class RequestContext:
    """Request id (taken from `X-Request-Id` or made), echoed in the answer and in error bodies, and the
    latency histogram by route template. Plain ASGI: the `@app.middleware` form costs far more per request."""

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            self.latency.labels(scope["method"], getattr(route, "path", "unmatched"), str(status)).observe(
                time.perf_counter() - started
            )


def install_common(
    app: FastAPI, *, registry: CollectorRegistry, readiness: dict[str, ReadinessCheck]
) -> None:
    """Error handlers, request ids, `/healthz`, `/readyz` and `/metrics` on `app`."""
    latency = Histogram(
        "http_request_seconds", "HTTP request latency", ["method", "route", "status"], registry=registry
    )

    app.add_middleware(RequestContext, latency=latency)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        headers = {"Retry-After": str(exc.extra.pop("retry_after"))} if "retry_after" in exc.extra else None
        return OrjsonResponse(
            error_body(request, exc.code, exc.message, **exc.extra), status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "problem": "invalid"}
        message = f"{first['field'] or 'body'}: {first['problem']}"
        return OrjsonResponse(
            error_body(request, "VALIDATION_ERROR", message, errors=problems), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        return OrjsonResponse(error_body(request, code, str(exc.detail)), status_code=exc.status_code)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        results = {}
        for name, check in readiness.items():
            try:
                results[name] = await check()
            except Exception:
                results[name] = False
        ready = all(results.values())
        return OrjsonResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
