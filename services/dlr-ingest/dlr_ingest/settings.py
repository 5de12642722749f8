"""dlr-ingest settings (environment)."""

from __future__ import annotations

from pydantic import Field

from shared.config import ServiceSettings


class DlrIngestSettings(ServiceSettings):
    database_url: str = ""  # the webhook never waits on PostgreSQL; it only publishes
    http_port: int = 8003
    webhook_secret_header: str = "X-Webhook-Secret"
    webhook_secrets: list[str] = Field(
        default_factory=list,
        description="accepted shared secrets (two during a rotation); empty disables the check",
    )
    max_body_bytes: int = 1024 * 1024
    max_reports_per_request: int = 5000
    publish_timeout_s: float = 10.0
