"""Request bodies of the enqueuer's HTTP API (camelCase on the wire, as the seed's clients) and the
conversion of audiences into the stored spec the store compiles to SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pydantic.alias_generators import to_camel

from shared.events import Channel, MessageType

Tag = str
AttributeKey = str


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class TenantIn(Body):
    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    default_region: str = Field(default="GR", pattern=r"^[A-Za-z]{2}$")
    sender_id: str | None = None
    subscription_status: Literal["active", "inactive"] = "active"
    credits: int = Field(default=0, ge=0, le=10**12, description="initial grant")


class TopUpIn(Body):
    credits: int = Field(gt=0, le=10**12)
    reference: str | None = Field(default=None, max_length=200)


class SubscriptionIn(Body):
    status: Literal["active", "inactive"]


class InlineRecipient(Body):
    phone: str = Field(min_length=3, max_length=32)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)
    email: str | None = Field(default=None, max_length=200)
    discount_code: str | None = Field(default=None, max_length=100)

    def values(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("first_name", self.first_name),
                ("last_name", self.last_name),
                ("email", self.email),
                ("discount_code", self.discount_code),
            )
            if v
        }


class FilterIn(Body):
    """Contacts matching every given condition."""

    list_ids: list[UUID] = Field(default_factory=list, max_length=50)
    tags_any: list[Tag] = Field(default_factory=list, max_length=50)
    tags_all: list[Tag] = Field(default_factory=list, max_length=50)
    attributes: dict[AttributeKey, str | list[str]] = Field(default_factory=dict, max_length=20)
    consent: list[Literal["granted", "unknown", "denied"]] = Field(default_factory=list)
    created_after: datetime | None = None
    created_before: datetime | None = None

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.list_ids:
            out["list_ids"] = [str(i) for i in self.list_ids]
        if self.tags_any:
            out["tags_any"] = [t.strip().lower() for t in self.tags_any]
        if self.tags_all:
            out["tags_all"] = [t.strip().lower() for t in self.tags_all]
        if self.attributes:
            out["attributes"] = {
                k.strip().lower(): [v] if isinstance(v, str) else list(v) for k, v in self.attributes.items()
            }
        if self.consent:
            out["consent"] = list(self.consent)
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None:
                if value.tzinfo is None:
                    raise ValueError(f"{to_camel(name)} needs a time zone")
                out[name] = value.isoformat()
        return out


class AudienceIn(Body):
    """Exactly one of: every contact, a list, a saved segment, or a filter."""

    all: bool = False
    list_id: UUID | None = None
    segment_id: UUID | None = None
    filter: FilterIn | None = None

    @model_validator(mode="after")
    def one_kind(self) -> AudienceIn:
        given = [self.all, self.list_id is not None, self.segment_id is not None, self.filter is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of all: true, listId, segmentId, filter")
        return self

    def spec(self) -> dict[str, Any]:
        if self.all:
            return {"kind": "all"}
        if self.list_id is not None:
            return {"kind": "list", "list_id": str(self.list_id)}
        if self.segment_id is not None:
            return {"kind": "segment", "segment_id": str(self.segment_id)}
        assert self.filter is not None
        return {"kind": "filter", "filter": self.filter.spec()}


class CampaignIn(Body):
    name: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=2000)
    sender_id: str | None = None
    message_type: MessageType = MessageType.MARKETING
    offer_url: HttpUrl | None = None
    recipients: list[InlineRecipient] = Field(default_factory=list)
    audience: AudienceIn | None = None
    scheduled_at: datetime | None = None

    @model_validator(mode="after")
    def one_audience(self) -> CampaignIn:
        if self.recipients and self.audience is not None:
            raise ValueError("give either recipients or an audience, not both")
        return self


class CampaignPatch(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    sender_id: str | None = None
    message_type: MessageType | None = None
    offer_url: HttpUrl | None = None
    recipients: list[InlineRecipient] | None = None
    audience: AudienceIn | None = None

    @model_validator(mode="after")
    def one_audience(self) -> CampaignPatch:
        if self.recipients is not None and self.audience is not None:
            raise ValueError("give either recipients or an audience, not both")
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        return self


class ScheduleIn(Body):
    scheduled_at: datetime


class ListIn(Body):
    name: str = Field(min_length=1, max_length=200)


class MembersIn(Body):
    contact_ids: list[int] = Field(default_factory=list, max_length=100_000)
    phones: list[str] = Field(default_factory=list, max_length=100_000)


class SegmentIn(Body):
    name: str = Field(min_length=1, max_length=200)
    filter: FilterIn


class PreviewIn(Body):
    audience: AudienceIn
    text: str = Field(default="", max_length=2000)
    message_type: MessageType = MessageType.MARKETING
    offer_url: HttpUrl | None = None


class ContactPatch(Body):
    first_name: str | None = Field(default=None, max_length=500)
    last_name: str | None = Field(default=None, max_length=500)
    email: str | None = Field(default=None, max_length=500)
    attributes: dict[AttributeKey, str] | None = Field(default=None, max_length=100)
    tags: list[Tag] | None = Field(default=None, max_length=50)
    consent: Literal["granted", "unknown", "denied"] | None = None
    opted_out: bool | None = None
