"""Request and response bodies of the enqueuer's HTTP API (camelCase on the wire, as the seed's clients)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.events import Channel, MessageType


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class TenantIn(Body):
    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    default_region: str = Field(default="GR", pattern=r"^[A-Za-z]{2}$")
    sender_id: str | None = None


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


class CampaignIn(Body):
    name: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=2000)
    sender_id: str | None = None
    message_type: MessageType = MessageType.MARKETING
    recipients: list[InlineRecipient] = Field(default_factory=list)
