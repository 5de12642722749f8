"""Projector settings (environment)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.config import ServiceSettings
from shared.links import LinkSettings

LEAN_FETCHES = {"fetch_max_bytes": 4 * 1024 * 1024, "partition_fetch_bytes": 2 * 1024 * 1024}


class ProjectorSettings(ServiceSettings):
    http_port: int = 8004
    poll_records: int = Field(
        default=20_000,
        description="records per consumed batch: bigger polls, fewer statements per event, and several "
        "slices to decode while the one before is applied",
    )
    report_hold_s: float = Field(
        default=5.0,
        ge=0,
        description="behind the log, delivery reports stamped later than the newest send result read wait "
        "for it up to this long (each one read first would be parked, then counted again); 0 turns it off",
    )
    rebuild_workers: int = Field(
        default=3, ge=1, description="processes a rebuild replays in (decoding is most of its CPU)"
    )
    sse_interval_s: float = Field(default=1.0, description="how often a progress stream looks for changes")
    sse_keepalive_s: float = Field(default=15.0, description="comment sent on an idle progress stream")
    enqueuer_public_url: str = Field(
        default="http://127.0.0.1:8001", description="where the dashboard (in the browser) sends commands"
    )

    @model_validator(mode="after")
    def _lean_fetches(self) -> Self:
        """Smaller fetches than the other services' unless KAFKA_* says otherwise: the projector reads every
        topic, and the fetcher keeps a buffer per partition; with 8 MB per partition its peak RSS in the 1M
        benchmark was 372 MB, with 2 MB 351 MB, at the same rate. A record larger than the limit is still
        fetched whole (the broker returns a partition's first batch in full)."""
        lean = {k: v for k, v in LEAN_FETCHES.items() if k not in self.kafka.model_fields_set}
        if lean:
            self.kafka = self.kafka.model_copy(update=lean)
        return self

    # Where recipients' links point: the dashboard's part counter includes them, as the sender sends them.
    links: LinkSettings = Field(default_factory=LinkSettings)
