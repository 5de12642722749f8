"""Typed settings read from the environment once at start-up; a missing required variable stops the process."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

APPLY_CHUNK_BYTES = 1024 * 1024


class KafkaSettings(BaseSettings):
    """Broker settings. Idempotence stays off by default: the local broker rejects it (see docs)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    acks: Literal["all", "1", "0"] = "all"
    enable_idempotence: bool = False
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "lz4"
    linger_ms: int = 5
    max_request_size: int = 8 * 1024 * 1024
    partitions: int = 6
    replication_factor: int = 1
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_batch_records: int = 500
    # A poll is applied in slices of at most this many raw bytes, each in its own transaction: one
    # BatchQueued carries thousands of recipients, and a whole poll of them decoded at once took >1 GB.
    # A slice is decoded while the one before it is applied, so a poll of several slices keeps the
    # consumer's CPU and PostgreSQL's busy at once.
    apply_chunk_bytes: int = APPLY_CHUNK_BYTES
    fetch_max_bytes: int = 16 * 1024 * 1024
    # A record bigger than this is still fetched whole (the broker returns a partition's first batch in
    # full; checked with 7 MB records against a 2 MB limit): it bounds what the fetcher buffers.
    partition_fetch_bytes: int = 8 * 1024 * 1024


class ServiceSettings(BaseSettings):
    """What every service reads: database, broker, HTTP listener, logging, operator key."""

    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    database_url: str = Field(description="PostgreSQL DSN")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    log_json: bool = True
    operator_api_key: str = Field(default="", description="key for operator endpoints; empty disables them")
    db_pool_min: int = 1
    db_pool_max: int = 8
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    gc_threshold: int = Field(default=50_000, ge=700, description="allocations between two collections")

    def producer_options(self) -> dict[str, object]:
        k = self.kafka
        opts: dict[str, object] = {
            "acks": "all" if k.acks == "all" else int(k.acks),
            "linger_ms": k.linger_ms,
            "max_request_size": k.max_request_size,
            "enable_idempotence": k.enable_idempotence,
        }
        if k.compression_type != "none":
            opts["compression_type"] = k.compression_type
        return opts
