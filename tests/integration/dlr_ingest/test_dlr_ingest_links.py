"""Recipient links on the real broker and PostgreSQL: the catalogue is learnt from the log, a click redirects
and is published, an unsubscribe is published once however often the page is opened, forged tokens get 404."""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from dlr_ingest.app import create_app
from dlr_ingest.settings import DlrIngestSettings
from mitto_sim.testing import serving

from shared.config import KafkaSettings
from shared.events import (
    BatchQueued,
    BatchRecipient,
    CampaignCreated,
    Channel,
    ContactUnsubscribed,
    Event,
    LinkClicked,
    MessageType,
    TenantRegistered,
    decode,
    encode,
    envelope_for,
)
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from shared.links import LinkSettings, make_token
from tests.support import eventually, records_of

LINKS_SECRET = "links-secret-for-tests"
AT = datetime(2026, 11, 25, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module")
async def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest_asyncio.fixture(scope="module")
async def url(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_links_{secrets.token_hex(4)}"
    settings = DlrIngestSettings(
        database_url=await server.create_database(name),
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
        links=LinkSettings(base_url="http://links.test", secret=LINKS_SECRET),
    )
    try:
        async with serving(create_app(settings)) as base:
            yield base
    finally:
        await server.drop_database(name)
        server.stop()


@pytest_asyncio.fixture
async def http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=30, follow_redirects=False) as client:
        yield client


async def publish(
    bootstrap: str, topic: str, key: str, event: Event, tenant: str, campaign: str | None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        envelope = envelope_for(event, occurred_at=AT, tenant_id=tenant, campaign_id=campaign)
        await producer.send_and_wait(topic, encode(envelope), key=key.encode())
    finally:
        await producer.stop()


class Shop:
    """A tenant with one marketing campaign sent to `recipients`, as the enqueuer would publish it."""

    def __init__(self, name: str, offer_url: str | None) -> None:
        self.name = name
        self.offer_url = offer_url
        self.tenant = str(uuid.uuid4())
        self.campaign = str(uuid.uuid4())
        base = random.randrange(10**12)
        self.recipients = {base + i: f"+30694{random.randrange(10**7):07d}" for i in range(3)}

    async def publish(self, bootstrap: str) -> None:
        await publish(
            bootstrap,
            "tenant.events",
            self.tenant,
            TenantRegistered(name=self.name, channel=Channel.SHOPIFY, default_region="GR"),
            self.tenant,
            None,
        )
        created = CampaignCreated(
            name="Autumn sale",
            text="Hi {{first_name}}",
            sender_id=None,
            message_type=MessageType.MARKETING,
            channel=Channel.SHOPIFY,
            created_at=AT,
            offer_url=self.offer_url,
        )
        await publish(bootstrap, "campaign.events", self.campaign, created, self.tenant, self.campaign)
        batch = BatchQueued(
            batch_id=f"{self.campaign}:run1:0",
            run_token="run1",
            batch_no=0,
            sender_id=None,
            template="Hi {{first_name}}",
            message_type=MessageType.MARKETING,
            recipients=tuple(BatchRecipient(id=i, phone=p) for i, p in self.recipients.items()),
            offer_url=self.offer_url,
        )
        await publish(bootstrap, "sms.batches", self.campaign, batch, self.tenant, self.campaign)

    @property
    def first(self) -> int:
        return next(iter(self.recipients))


async def known(http: httpx.AsyncClient, recipient: int) -> bool:
    r = await http.get(f"/u/{make_token(LINKS_SECRET, 'unsubscribe', recipient + 10**15)}")
    assert r.status_code == 404  # a recipient nobody sent to: never known
    r = await http.get(f"/l/{make_token(LINKS_SECRET, 'offer', recipient)}")
    return r.status_code == 302


async def engagement(bootstrap: str, campaign: str) -> list[tuple[str | None, str | None, Event]]:
    out = []
    for _, value in await records_of(bootstrap, "engagement.events", campaign.encode()):
        envelope, event = decode(value)
        out.append((envelope.tenant_id, envelope.campaign_id, event))
    return out


async def test_an_offer_link_redirects_to_the_campaign_offer_and_publishes_the_click(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    shop = Shop("Corner Shop", "https://shop.example/autumn?utm=sms")
    await shop.publish(broker.bootstrap)
    await eventually(lambda: known(http, shop.first), timeout=60, what="the catalogue to know the recipient")

    r = await http.get(f"/l/{make_token(LINKS_SECRET, 'offer', shop.first)}")
    assert r.status_code == 302
    assert r.headers["location"] == "https://shop.example/autumn?utm=sms"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"

    async def clicks() -> list[tuple[str | None, str | None, Event]]:
        events = await engagement(broker.bootstrap, shop.campaign)
        return [e for e in events if isinstance(e[2], LinkClicked)] if len(events) >= 2 else []

    found = await eventually(clicks, timeout=30, what="two LinkClicked (the probe and the click)")
    for tenant, campaign, event in found:
        assert (tenant, campaign) == (shop.tenant, shop.campaign)
        assert isinstance(event, LinkClicked)
        assert (event.recipient_id, event.link) == (shop.first, "offer")


async def test_unsubscribing_shows_the_shop_and_publishes_once_however_often_it_is_opened(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    shop = Shop("Tom & Jerry's", "https://shop.example/x")
    await shop.publish(broker.bootstrap)
    await eventually(lambda: known(http, shop.first), timeout=60, what="the catalogue to know the recipient")
    second = list(shop.recipients)[1]
    token = make_token(LINKS_SECRET, "unsubscribe", second)

    pages = [await http.get(f"/u/{token}") for _ in range(3)]
    for page in pages:
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "You are unsubscribed from Tom &amp; Jerry&#x27;s" in page.text

    async def unsubscribes() -> list[tuple[str | None, str | None, Event]]:
        events = await engagement(broker.bootstrap, shop.campaign)
        return [e for e in events if isinstance(e[2], ContactUnsubscribed)]

    (tenant, campaign, event), *more = await eventually(unsubscribes, timeout=30, what="ContactUnsubscribed")
    assert more == []
    assert (tenant, campaign) == (shop.tenant, shop.campaign)
    assert isinstance(event, ContactUnsubscribed)
    assert (event.recipient_id, event.phone) == (second, shop.recipients[second])
    metrics = (await http.get("/metrics")).text
    assert 'dlr_link_requests_total{kind="unsubscribe",outcome="again"} 2.0' in metrics


async def test_forged_swapped_and_unknown_tokens_get_a_404_page_and_publish_nothing(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    shop = Shop("Quiet Shop", None)  # no offer URL: its offer links lead nowhere
    await shop.publish(broker.bootstrap)
    unsubscribe = make_token(LINKS_SECRET, "unsubscribe", shop.first)

    async def learnt() -> bool:
        return (await http.get(f"/u/{unsubscribe}")).status_code == 200

    await eventually(learnt, timeout=60, what="the catalogue to know the recipient")
    valid_offer = make_token(LINKS_SECRET, "offer", shop.first)
    forged = [
        make_token("another-secret", "offer", shop.first),
        valid_offer[:-1] + ("A" if valid_offer[-1] != "A" else "B"),
        valid_offer[:20],
        "not-a-token",
    ]
    for token in forged:
        r = await http.get(f"/l/{token}")
        assert r.status_code == 404, token
        assert "This link is not valid" in r.text
        assert "location" not in r.headers
    assert (await http.get(f"/u/{valid_offer}")).status_code == 404  # an offer token is no unsubscribe token
    assert (await http.get(f"/l/{unsubscribe}")).status_code == 404
    assert (await http.get(f"/l/{valid_offer}")).status_code == 404  # no offer URL
    events = await engagement(broker.bootstrap, shop.campaign)
    assert [type(e[2]) for e in events] == [ContactUnsubscribed]
