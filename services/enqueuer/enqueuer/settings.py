"""Enqueuer settings (environment)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from shared.config import KafkaSettings, ServiceSettings
from shared.links import LinkSettings


class EnqueuerKafkaSettings(KafkaSettings):
    """The enqueuer's records are mostly planned batches of ~350 KB of JSON: zstd packs them five to one at
    a fifth of the CPU of aiokafka's lz4 (level 9). `KAFKA_COMPRESSION_TYPE` still decides."""

    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"


class EnqueuerSettings(ServiceSettings):
    http_port: int = 8001
    kafka: KafkaSettings = Field(default_factory=EnqueuerKafkaSettings)
    relay_linger_ms: int = Field(
        default=0,
        ge=0,
        description="the producer's linger (replaces KAFKA_LINGER_MS here): see `producer_options`",
    )
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

    def producer_options(self) -> dict[str, object]:
        """The enqueuer produces only through its outbox relay, which hands over a burst of rows and then
        waits for all of them, so a linger adds no batching, only delay: aiokafka sends one record batch per
        partition per request, a planned batch is larger than a record batch and waits out the linger on its
        own, and a campaign's batches share one partition (5 ms x 200 batches = 1 s per million)."""
        return {**super().producer_options(), "linger_ms": self.relay_linger_ms}

    @property
    def stuck_after(self) -> timedelta:
        return timedelta(seconds=self.stuck_run_after_s)

    @property
    def reservation_ttl(self) -> timedelta:
        return timedelta(seconds=self.reservation_ttl_s)
