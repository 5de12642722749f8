"""Request bodies of the operator API (camelCase on the wire)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RefreshIn(BaseModel):
    """Which messages to refresh: sent at least `olderThanMinutes` ago without a final status, in one
    campaign, one bulk, or anywhere (neither given), at most `limit` of them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    older_than_minutes: int = Field(alias="olderThanMinutes", ge=0, le=60 * 24 * 366)
    limit: int = Field(default=1000, ge=1)
    campaign_id: str | None = Field(default=None, alias="campaignId", min_length=1, max_length=100)
    bulk_id: str | None = Field(default=None, alias="bulkId", min_length=1, max_length=100)
