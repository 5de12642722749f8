"""Enqueuer settings (environment)."""

from __future__ import annotations

from pydantic import Field

from shared.config import ServiceSettings


class EnqueuerSettings(ServiceSettings):
    http_port: int = 8001
    batch_size: int = Field(default=5000, ge=1, le=20_000, description="recipients per BatchQueued")
    max_inline_recipients: int = 100_000
