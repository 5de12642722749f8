"""The benchmark's yardstick: the webhook's server stack with nothing behind it. Same uvicorn options as
every service (uvloop, httptools, no access log), same FastAPI app setup and common middleware
(`shared.web.install_common`), one POST route that reads the body and answers 202.

    python bare.py --port 8093 [--workers 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response

from shared.web import OrjsonResponse, install_common


def create_app() -> FastAPI:
    app = FastAPI(title="bare 202", default_response_class=OrjsonResponse)

    async def ready() -> bool:
        return True

    install_common(app, registry=CollectorRegistry(), readiness={"self": ready})

    @app.post("/webhooks/mitto/dlr", status_code=202)
    async def accept(request: Request) -> Response:
        body = await request.body()
        return Response(b'{"accepted":%d}' % len(body), status_code=202, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bare:create_app",
        factory=True,
        app_dir=str(Path(__file__).parent),
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
