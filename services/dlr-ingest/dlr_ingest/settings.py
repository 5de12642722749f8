"""dlr-ingest settings (environment). Mitto's and the projector's are read without prefix, as deployments
document them; lists are JSON (`WEBHOOK_SECRETS='["old", "new"]'`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.config import ServiceSettings
from shared.links import LinkSettings


class DlrIngestSettings(ServiceSettings):
    # PostgreSQL serves the link pages only (recipient -> campaign, offer URL, shop); the webhook never
    # touches it.
    http_port: int = 8003
    workers: int = Field(
        default=1, ge=1, description="HTTP worker processes sharing the port, each with its own producer"
    )

    # --- webhook authentication: every configured check must pass -----------------------------------
    webhook_secret_header: str = "X-Webhook-Secret"
    webhook_secrets: list[str] = Field(
        default_factory=list,
        description="accepted shared secrets (two during a rotation); empty disables the check",
    )
    webhook_hmac_secrets: list[str] = Field(
        default_factory=list,
        description="HMAC-SHA256 keys over f'{timestamp}.{body}' (two during a rotation); empty disables it",
    )
    webhook_signature_header: str = "X-Signature"
    webhook_timestamp_header: str = "X-Timestamp"
    webhook_tolerance_s: int = Field(default=300, ge=1, description="accepted clock skew and replay window")
    webhook_allowed_cidrs: list[str] = Field(
        default_factory=list, description="source networks allowed to call the webhook; empty allows any"
    )
    webhook_trusted_proxy_cidrs: list[str] = Field(
        default_factory=list,
        description="peers whose X-Forwarded-For is believed; empty: the TCP peer is the source",
    )

    # --- webhook limits and the produce path ----------------------------------------------------------
    max_body_bytes: int = 1024 * 1024
    max_reports_per_request: int = 5000
    publish_timeout_s: float = 10.0
    retry_after_s: int = 5
    publish_backlog_bytes: int = 64 * 1024 * 1024
    producer_linger_ms: int = 0  # batches fill while the previous one is in flight; no extra wait
    producer_batch_bytes: int = 1024 * 1024
    producer_connections: int = Field(
        default=1,
        ge=1,
        description="producers per worker, each with one produce request in flight (more for a distant broker)",
    )
    producer_request_timeout_ms: int = 30_000
    # A record batch is compressed only when the request opening it has this many reports: under
    # single-report traffic a batch holds a few records of concurrent requests, where lz4 cost ~30 us of
    # CPU per report (12 % of the webhook's rate); bodies of hundreds of reports shrink ~4x in the log.
    producer_compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "lz4"
    producer_compress_from_reports: int = 16

    # --- status refresh -------------------------------------------------------------------------------
    projector_url: str = "http://127.0.0.1:8004"
    projector_timeout_s: float = 30.0
    mitto_base_url: str = "http://127.0.0.1:8090"
    mitto_api_key: str = ""
    mitto_timeout_s: float = 10.0
    refresh_concurrency: int = Field(default=16, ge=1, description="status lookups in flight")
    refresh_max_limit: int = Field(default=10_000, ge=1)

    links: LinkSettings = Field(default_factory=LinkSettings)
