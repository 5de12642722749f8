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
        default="Smsflow", description="default sender id when neither campaign nor tenant has one"
    )
    mitto_connect_timeout_s: float = 5.0
    mitto_read_timeout_s: float = 30.0
    max_concurrent_bulk_calls: int = Field(default=8, ge=1)
    max_attempts: int = Field(
        default=6, ge=1, description="tries of a batch the provider provably did not get"
    )
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    batches_per_poll: int = 16
    links: LinkSettings = Field(default_factory=LinkSettings)
