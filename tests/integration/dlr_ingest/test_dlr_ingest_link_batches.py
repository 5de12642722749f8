"""The link catalogue on the real broker and PostgreSQL: one row per BatchQueued, found by the batch whose id
range holds the recipient. Overlapping ranges of two campaigns, duplicated batches, ids inside a range but not
in its batch, rows of the previous one-row-per-recipient table, odd phones, and undecodable records."""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from dlr_ingest import store
from dlr_ingest.app import create_app
from dlr_ingest.domain import LinkTarget
from dlr_ingest.settings import DlrIngestSettings
from mitto_sim.testing import serving

from shared.broker import ensure_topics
from shared.config import KafkaSettings
from shared.events import (
    BatchQueued,
    BatchRecipient,
    CampaignCreated,
    Channel,
    ContactUnsubscribed,
    Event,
    MessageType,
    TenantRegistered,
    decode,
    encode,
    envelope_for,
)
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from shared.links import LinkSettings, make_token
from tests.support import end_offsets, eventually, records_of

LINKS_SECRET = "links-secret-for-catalogue-tests"
AT = datetime(2026, 11, 25, tzinfo=UTC)


@dataclass
class Edge:
    broker: TansuBroker
    http: httpx.AsyncClient
    db: asyncpg.Connection
    producer: AIOKafkaProducer


@pytest_asyncio.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    with TansuBroker() as broker:
        server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
        name = f"dlr_ingest_catalogue_{secrets.token_hex(4)}"
        settings = DlrIngestSettings(
            database_url=await server.create_database(name),
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
            links=LinkSettings(base_url="http://links.test", secret=LINKS_SECRET),
        )
        await ensure_topics(broker.bootstrap, ["dlq.dlr-ingest"], 3)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            async with serving(create_app(settings)) as base:
                db = await asyncpg.connect(
                    settings.database_url, server_settings={"search_path": "dlr_ingest"}
                )
                try:
                    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                        yield Edge(broker, http, db, producer)
                finally:
                    await db.close()
        finally:
            await producer.stop()
            await server.drop_database(name)
            server.stop()


class Shop:
    """A tenant with one campaign, its offer URL its own, as the enqueuer would publish them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tenant = str(uuid.uuid4())
        self.campaign = str(uuid.uuid4())
        self.offer_url = f"https://shop.example/{self.campaign}"

    async def open(self, edge: Edge) -> None:
        registered = TenantRegistered(name=self.name, channel=Channel.SHOPIFY, default_region="GR")
        await self.send(edge, "tenant.events", self.tenant, registered, campaign=None)
        created = CampaignCreated(
            name="Autumn sale",
            text="Hi",
            sender_id=None,
            message_type=MessageType.MARKETING,
            channel=Channel.SHOPIFY,
            created_at=AT,
            offer_url=self.offer_url,
        )
        await self.send(edge, "campaign.events", self.campaign, created)

    def batch(self, index: int, recipients: dict[int, str]) -> BatchQueued:
        return BatchQueued(
            batch_id=f"{self.campaign}:run1:{index}",
            run_token="run1",
            batch_no=index,
            sender_id=None,
            template="Hi {{first_name}}",
            message_type=MessageType.MARKETING,
            recipients=tuple(
                BatchRecipient(id=i, phone=p, values={"first_name": "Eleni"}) for i, p in recipients.items()
            ),
            offer_url=self.offer_url,
        )

    async def send(
        self, edge: Edge, topic: str, key: str, event: Event, campaign: str | None = "this"
    ) -> None:
        envelope = envelope_for(
            event,
            occurred_at=AT,
            tenant_id=self.tenant,
            campaign_id=self.campaign if campaign == "this" else campaign,
        )
        await edge.producer.send_and_wait(topic, encode(envelope), key=key.encode())

    def target(self, recipient: int, phone: str) -> LinkTarget:
        return LinkTarget(recipient, self.campaign, self.tenant, phone, self.offer_url, self.name)


def phones_of(ids: list[int]) -> dict[int, str]:
    return {i: f"+30694{random.randrange(10**7):07d}" for i in ids}


async def dead_letters(edge: Edge, key: str) -> list[bytes]:
    """The values dead-lettered by dlr-ingest under `key`."""
    if not any((await end_offsets(edge.broker.bootstrap, ["dlq.dlr-ingest"])).values()):
        return []
    return [value for _, value in await records_of(edge.broker.bootstrap, "dlq.dlr-ingest", key.encode())]


async def resolves(edge: Edge, recipient: int) -> bool:
    return (await edge.http.get(f"/l/{make_token(LINKS_SECRET, 'offer', recipient)}")).status_code == 302


async def test_tokens_of_overlapping_batches_of_two_campaigns_resolve_to_their_own_campaign(
    edge: Edge,
) -> None:
    # Two campaigns enqueued together draw ids from one sequence: their batches' ranges interleave.
    base = random.randrange(10**12)
    north, south = Shop("North Shop"), Shop("South Shop")
    north_recipients = phones_of([base + i for i in range(0, 12, 2)])
    south_recipients = phones_of([base + i for i in range(1, 12, 2)])
    for shop, recipients in ((north, north_recipients), (south, south_recipients)):
        await shop.open(edge)
        await shop.send(edge, "sms.batches", shop.campaign, shop.batch(0, recipients))
    last = base + 11
    await eventually(lambda: resolves(edge, last), timeout=60, what="the catalogue to know both batches")

    overlapping = await edge.db.fetchval(
        """SELECT count(*) FROM link_batches WHERE batch_id = ANY($1::text[])
           AND int8range(min_id, max_id, '[]') @> $2::bigint""",
        [f"{north.campaign}:run1:0", f"{south.campaign}:run1:0"],
        base + 5,
    )
    assert overlapping == 2
    for shop, recipients in ((north, north_recipients), (south, south_recipients)):
        for recipient, phone in recipients.items():
            assert await store.load_link_target(edge.db, recipient) == shop.target(recipient, phone)
            r = await edge.http.get(f"/l/{make_token(LINKS_SECRET, 'offer', recipient)}")
            assert (r.status_code, r.headers["location"]) == (302, shop.offer_url)

    recipient = base + 3
    page = await edge.http.get(f"/u/{make_token(LINKS_SECRET, 'unsubscribe', recipient)}")
    assert "You are unsubscribed from South Shop" in page.text

    async def unsubscribed() -> list[tuple[str | None, Event]]:
        found = []
        for _, value in await records_of(edge.broker.bootstrap, "engagement.events", south.campaign.encode()):
            envelope, event = decode(value)
            if isinstance(event, ContactUnsubscribed):
                found.append((envelope.campaign_id, event))
        return found

    ((campaign, event),) = await eventually(unsubscribed, timeout=30, what="ContactUnsubscribed")
    assert campaign == south.campaign
    assert isinstance(event, ContactUnsubscribed)
    assert (event.recipient_id, event.phone) == (recipient, south_recipients[recipient])


async def test_an_id_inside_a_batch_range_but_not_in_the_batch_gets_the_404_page(edge: Edge) -> None:
    base = random.randrange(10**12)
    shop = Shop("Gappy Shop")
    await shop.open(edge)
    await shop.send(edge, "sms.batches", shop.campaign, shop.batch(0, phones_of([base, base + 10])))
    await eventually(lambda: resolves(edge, base + 10), timeout=60, what="the catalogue to know the batch")

    for missing in (base + 5, base + 11, base - 1):
        assert await store.load_link_target(edge.db, missing) is None
        for kind, path in (("offer", "l"), ("unsubscribe", "u")):
            r = await edge.http.get(f"/{path}/{make_token(LINKS_SECRET, kind, missing)}")
            assert r.status_code == 404
            assert "This link is not valid" in r.text


async def test_a_duplicated_batch_is_one_row_and_its_tokens_resolve(edge: Edge) -> None:
    base = random.randrange(10**12)
    shop = Shop("Echo Shop")
    await shop.open(edge)
    recipients = phones_of([base + 2, base, base + 1])
    batch = shop.batch(0, recipients)
    for _ in range(3):
        await shop.send(edge, "sms.batches", shop.campaign, batch)
    after = shop.batch(1, phones_of([base + 3]))  # consumed after every copy (same partition)
    await shop.send(edge, "sms.batches", shop.campaign, after)
    await eventually(lambda: resolves(edge, base + 3), timeout=60, what="the catalogue to know the batches")

    rows = await edge.db.fetch(
        "SELECT min_id, max_id, ids, phones FROM link_batches WHERE batch_id = $1", batch.batch_id
    )
    assert [tuple(r) for r in rows] == [(base, base + 2, list(recipients), list(recipients.values()))]
    for recipient, phone in recipients.items():
        assert await store.load_link_target(edge.db, recipient) == shop.target(recipient, phone)
    assert await dead_letters(edge, shop.campaign) == []


async def test_recipients_of_the_table_before_link_batches_still_resolve(edge: Edge) -> None:
    shop = Shop("Old Shop")
    await shop.open(edge)
    recipient, phone = random.randrange(10**12), "+306941234567"
    # A row as versions before migration 0002 wrote them (one per recipient, no batch).
    await edge.db.execute(
        "INSERT INTO recipients (id, campaign_id, tenant_id, phone) VALUES ($1, $2, $3, $4)",
        recipient,
        shop.campaign,
        shop.tenant,
        phone,
    )

    async def known() -> LinkTarget | None:
        target = await store.load_link_target(edge.db, recipient)
        return target if target is not None and target.shop_name else None

    assert await eventually(known, timeout=60, what="the shop's events") == shop.target(recipient, phone)
    r = await edge.http.get(f"/l/{make_token(LINKS_SECRET, 'offer', recipient)}")
    assert (r.status_code, r.headers["location"]) == (302, shop.offer_url)
    page = await edge.http.get(f"/u/{make_token(LINKS_SECRET, 'unsubscribe', recipient)}")
    assert "You are unsubscribed from Old Shop" in page.text


async def test_phones_are_stored_as_they_came_whatever_they_hold(edge: Edge) -> None:
    base = random.randrange(10**12)
    shop = Shop("Odd Shop")
    await shop.open(edge)
    odd = ['+30 "694"', "a\\b", "x,y", "{z}", "NULL", " spaced ", "☃ ñ", "", "\\", '"']
    recipients = {base + i: phone for i, phone in enumerate(odd)}
    await shop.send(edge, "sms.batches", shop.campaign, shop.batch(0, recipients))
    await eventually(lambda: resolves(edge, base), timeout=60, what="the catalogue to know the batch")

    stored = await edge.db.fetchval(
        "SELECT phones FROM link_batches WHERE batch_id = $1", shop.batch(0, {}).batch_id
    )
    assert stored == odd
    for recipient, phone in recipients.items():
        assert await store.load_link_target(edge.db, recipient) == shop.target(recipient, phone)


async def test_an_undecodable_batch_is_dead_lettered_and_the_next_one_is_catalogued(edge: Edge) -> None:
    base = random.randrange(10**12)
    shop = Shop("Broken Shop")
    await shop.open(edge)
    await edge.producer.send_and_wait("sms.batches", b"{not json", key=shop.campaign.encode())
    await shop.send(edge, "sms.batches", shop.campaign, shop.batch(0, phones_of([base])))
    await eventually(lambda: resolves(edge, base), timeout=60, what="the batch after the broken record")

    async def dead_lettered() -> list[bytes]:
        return await dead_letters(edge, shop.campaign)

    assert await eventually(dead_lettered, what="a dead letter") == [b"{not json"]
