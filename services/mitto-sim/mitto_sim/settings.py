"""Configuration: startup settings from `MITTO_SIM_*` and the part that may change at run time.

`SimConfig` holds the fault, latency and delivery-report knobs that `PATCH /sim/config` may change;
`SimSettings` adds what is fixed for the life of the process (address, API key, seed).
"""

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Share = Field(default=0.0, ge=0.0, le=1.0)


class SimConfig(BaseModel):
    """Run-time behaviour. Shares are probabilities in [0, 1], except `reject_share`: a deterministic rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0)
    reject_share: float = Share
    max_bulk_items: int = Field(default=5000, ge=1)
    http_429_share: float = Share
    http_500_share: float = Share
    http_500_after_accept: bool = True
    timeout_share: float = Share
    timeout_seconds: float = Field(default=30.0, ge=0.0)
    retry_after_seconds: int = Field(default=1, ge=0)
    webhook_url: str | None = None
    webhook_headers: dict[str, str] = Field(default_factory=dict)
    dlr_delay_ms: float = Field(default=1000.0, ge=0.0)
    dlr_jitter_ms: float = Field(default=0.0, ge=0.0)
    dlr_failure_share: float = Share
    dlr_batch_size: int = Field(default=500, ge=1)
    dlr_single_object: bool = False
    dlr_duplicate_share: float = Share
    dlr_sent_first_share: float = Share
    dlr_out_of_order_share: float = Share
    dlr_alt_spelling_share: float = Share

    @model_validator(mode="after")
    def _faults_fit_in_one(self) -> Self:
        # One draw per call picks at most one fault, so their shares must leave room for each other.
        if self.http_429_share + self.http_500_share + self.timeout_share > 1.0:
            raise ValueError("http_429_share + http_500_share + timeout_share must not exceed 1")
        return self


class SimSettings(BaseSettings, SimConfig):
    """Everything read from the environment at startup."""

    model_config = SettingsConfigDict(env_prefix="MITTO_SIM_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    api_key: str | None = None
    seed: int = 0

    def runtime(self) -> SimConfig:
        return SimConfig.model_validate(self.model_dump(include=set(SimConfig.model_fields)))


class ConfigError(ValueError):
    """A config patch that names an unknown field or breaks a constraint; nothing was applied."""


def merge_config(current: SimConfig, patch: Any) -> SimConfig:
    """Return `current` with the fields of `patch` (a JSON object) replaced, validated as a whole."""
    if not isinstance(patch, Mapping):
        raise ConfigError("config patch must be a JSON object")
    unknown = sorted(str(key) for key in patch if key not in SimConfig.model_fields)
    if unknown:
        raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
    try:
        return SimConfig.model_validate({**current.model_dump(), **patch})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems) from exc
