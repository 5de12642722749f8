"""Sender settings (environment). Mitto's are read without prefix, as the deployment documents them."""

from __future__ import annotations

from pydantic import Field

from shared.config import ServiceSettings
from shared.links import LinkSettings


class SenderSettings(ServiceSettings):
    http_port: int = 8002
    mitto_base_url: str = "http://127.0.0.1:8090"
    mitto_api_key: str = ""
    mitto_traffic_account_id: str = "local-traffic-account"
    mitto_sender: str = Field(
        default="Smsflow", description="sender id when neither the campaign nor its tenant has one"
    )
    mitto_connect_timeout_s: float = 5.0
    mitto_read_timeout_s: float = 30.0
    mitto_keepalive_expiry_s: float = Field(
        default=2.0, description="idle pooled connections are dropped before the provider closes them"
    )
    mitto_messages_per_second: float = Field(
        default=0.0, ge=0.0, description="per traffic account and per replica; 0 = no limit of our own"
    )
    mitto_burst_seconds: float = Field(default=1.0, ge=0.0, description="seconds of traffic the bucket holds")
    max_concurrent_bulk_calls: int = Field(default=8, ge=1, description="per traffic account and per replica")
    max_attempts: int = Field(
        default=6, ge=1, description="tries of a call the provider provably did not get"
    )
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    batches_per_poll: int = Field(default=16, ge=1)
    resolver_interval_s: float = Field(
        default=10.0, gt=0, description="how often ambiguous batches are looked at (lookups, stale resends)"
    )
    lookup_concurrency: int = Field(default=8, ge=1)
    links: LinkSettings = Field(default_factory=LinkSettings)
