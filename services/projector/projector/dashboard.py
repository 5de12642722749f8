"""The campaign dashboard: static files (no build step) served from the projector, and the small config the
page needs to call the enqueuer for actions."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from projector.settings import ProjectorSettings

FILES = Path(__file__).with_name("dashboard")


def mount_dashboard(app: FastAPI, settings: ProjectorSettings) -> None:
    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard/config.json", include_in_schema=False)
    async def config() -> dict[str, str]:
        return {"enqueuerUrl": settings.enqueuer_public_url.rstrip("/"), "linkBase": settings.links.base_url}

    app.mount("/dashboard", StaticFiles(directory=FILES, html=True), name="dashboard")
