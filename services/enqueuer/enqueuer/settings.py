"""Enqueuer settings (environment)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from shared.config import ServiceSettings
from shared.links import LinkSettings


class EnqueuerSettings(ServiceSettings):
    http_port: int = 8001
    batch_size: int = Field(default=5000, ge=1, le=20_000, description="recipients per BatchQueued")
    max_batch_bytes: int = Field(
        default=900_000,
        ge=10_000,
        description="JSON bytes of recipients per BatchQueued (below the broker limit)",
    )
    max_inline_recipients: int = 100_000
    loop_interval_s: float = Field(
        default=1.0, gt=0, description="scheduler / stuck-run / expiry loop period"
    )
    stuck_run_after_s: float = Field(
        default=300.0, gt=0, description="republish a run's batches after this quiet time"
    )
    reservation_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="a run's credit hold expires after this"
    )
    import_max_errors: int = Field(default=10_000, ge=0, description="bad rows listed in an import's answer")
    # Must match the sender's: the link length is part of the price of every marketing message.
    links: LinkSettings = Field(default_factory=LinkSettings)
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="browser origins allowed to send commands (the dashboard's)"
    )

    @property
    def stuck_after(self) -> timedelta:
        return timedelta(seconds=self.stuck_run_after_s)

    @property
    def reservation_ttl(self) -> timedelta:
        return timedelta(seconds=self.reservation_ttl_s)
