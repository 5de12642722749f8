"""Projector settings (environment)."""

from __future__ import annotations

from shared.config import ServiceSettings


class ProjectorSettings(ServiceSettings):
    http_port: int = 8004
