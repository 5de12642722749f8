"""What the link pages learn from the log, where a redirect may go, and refresh bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dlr_ingest import pages
from dlr_ingest.domain import (
    BadReport,
    Candidate,
    RefreshSummary,
    Report,
    catalogue,
    parse_candidates,
    redirect_target,
)

from shared.events import (
    BatchQueued,
    BatchRecipient,
    CampaignCreated,
    CampaignUpdated,
    Channel,
    DeliveryStatus,
    Envelope,
    Event,
    MessageType,
    TenantRegistered,
    envelope_for,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


def wrapped(event: Event, tenant: str = "t1", campaign: str | None = "c1") -> tuple[Envelope, Event]:
    return envelope_for(event, occurred_at=AT, tenant_id=tenant, campaign_id=campaign), event


def created(offer: str | None) -> CampaignCreated:
    return CampaignCreated(
        name="Autumn sale",
        text="Hi",
        sender_id=None,
        message_type=MessageType.MARKETING,
        channel=Channel.SHOPIFY,
        created_at=AT,
        offer_url=offer,
    )


def batch(*ids: int, offer: str | None = "https://shop.example/b") -> BatchQueued:
    return BatchQueued(
        batch_id="c1:run:0",
        run_token="run",
        batch_no=0,
        sender_id=None,
        template="Hi",
        message_type=MessageType.MARKETING,
        recipients=tuple(BatchRecipient(id=i, phone=f"+3069400000{i}") for i in ids),
        offer_url=offer,
    )


def test_tenants_campaigns_and_recipients_are_taken_from_their_events() -> None:
    c = catalogue(
        [
            wrapped(
                TenantRegistered(name="Corner Shop", channel=Channel.SHOPIFY, default_region="GR"),
                campaign=None,
            ),
            wrapped(created("https://shop.example/a")),
            wrapped(batch(1, 2)),
        ]
    )
    assert c.tenants["t1"].name == "Corner Shop"
    assert c.campaigns["c1"].offer_url == "https://shop.example/a"
    assert c.batch_offers["c1"].offer_url == "https://shop.example/b"
    (row,) = c.batches.values()
    assert (row.batch_id, row.campaign_id, row.tenant_id) == ("c1:run:0", "c1", "t1")
    assert dict(zip(row.ids, row.phones, strict=True)) == {1: "+30694000001", 2: "+30694000002"}


def test_a_later_update_of_the_same_campaign_wins() -> None:
    updated = CampaignUpdated(
        name="Winter sale",
        text="Hi",
        sender_id=None,
        message_type=MessageType.MARKETING,
        updated_at=AT,
        offer_url=None,
    )
    c = catalogue([wrapped(created("https://shop.example/a")), wrapped(updated)])
    assert (c.campaigns["c1"].name, c.campaigns["c1"].offer_url) == ("Winter sale", None)


def test_a_batch_without_a_campaign_in_its_envelope_names_it_by_its_batch_id() -> None:
    c = catalogue([wrapped(batch(7), campaign=None)])
    assert c.batches["c1:run:0"].campaign_id == "c1"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://shop.example/offer?x=1", "https://shop.example/offer?x=1"),
        (" http://shop.example ", "http://shop.example"),
        ("javascript:alert(1)", None),
        ("//evil.example", None),
        ("ftp://shop.example/file", None),
        ("https://", None),
        ("", None),
        (None, None),
    ],
)
def test_only_absolute_http_urls_are_redirect_targets(url: str | None, target: str | None) -> None:
    assert redirect_target(url) == target


def test_candidates_skip_unusable_items_and_duplicates() -> None:
    body = (
        b'{"items": [{"messageId": "m1", "campaignId": "c1", "tenantId": "t1", "sentAt": "2026-01-01T00:00:00Z"},'
        b' {"messageId": ""}, {"campaignId": "c2"}, 5, {"messageId": "m1"}, {"messageId": "m2"}]}'
    )
    assert parse_candidates(body) == [Candidate("m1", "c1", "t1"), Candidate("m2", None, None)]


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"items": 3}'])
def test_a_candidates_answer_without_items_is_refused(body: bytes) -> None:
    with pytest.raises(BadReport):
        parse_candidates(body)


def test_the_summary_counts_final_non_final_and_unknown_statuses() -> None:
    s = RefreshSummary(candidates=4)
    for raw, status in [
        ("Delivered", DeliveryStatus.DELIVERED),
        ("Failure", DeliveryStatus.FAILED),
        ("Sent", DeliveryStatus.SENT),
        ("Limbo", DeliveryStatus.UNKNOWN),
    ]:
        s.count(Report("m", raw, status, None, None))
    s.error("m9: timeout")
    s.error("m10: 500")
    assert s.as_json() == {
        "candidates": 4,
        "lookedUp": 4,
        "published": 0,
        "final": 2,
        "nonFinal": 2,
        "unknownStatus": 1,
        "notFound": 0,
        "errors": 2,
        "byStatus": {"Delivered": 1, "Failure": 1, "Sent": 1, "Limbo": 1},
        "firstError": "m9: timeout",
    }


def test_pages_escape_the_shop_name_and_say_who_unsubscribed_you() -> None:
    html = pages.unsubscribed("Tom & Jerry's <Shop>")
    assert "You are unsubscribed from Tom &amp; Jerry&#x27;s &lt;Shop&gt;" in html
    assert '<html lang="en">' in html
    assert "<script" not in html
    assert "this sender" in pages.unsubscribed(None)
