"""The broker stops answering: the webhook says 503 with Retry-After instead of 202, and once the broker is
back every report the provider retried is in the log. Nothing answered 202 is ever missing.

The broker is frozen (SIGSTOP), not killed: the local broker keeps its log in memory only, so a killed one
would lose what it had acknowledged, which says nothing about the webhook.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio
from dlr_ingest.app import create_app
from dlr_ingest.settings import DlrIngestSettings
from mitto_sim.testing import serving

from shared.config import KafkaSettings
from shared.events import DeliveryReported, decode
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import eventually

TOPIC = "delivery.reports"
SECRET = {"X-Webhook-Secret": "outage-secret"}


@pytest_asyncio.fixture(scope="module")
async def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest_asyncio.fixture(scope="module")
async def url(broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_outage_{secrets.token_hex(4)}"
    database_url = await server.create_database(name)
    settings = DlrIngestSettings(
        database_url=database_url,
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
        webhook_secrets=["outage-secret"],
        publish_timeout_s=2.0,
        retry_after_s=1,
        producer_request_timeout_ms=4000,
    )
    try:
        async with serving(create_app(settings)) as base:
            yield base
    finally:
        if broker.is_running():
            broker.resume()
        await server.drop_database(name)
        server.stop()


def batch(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"messageId": f"{prefix}-{i}", "deliveryStatus": "Delivered"} for i in range(n)]


async def all_message_ids(bootstrap: str) -> list[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ids: list[str] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for r in records:
                    _, event = decode(r.value)
                    assert isinstance(event, DeliveryReported)
                    ids.append(event.provider_message_id)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return ids
    finally:
        await consumer.stop()


async def test_broker_outage_answers_503_and_the_retries_lose_nothing(url: str, broker: TansuBroker) -> None:
    run = secrets.token_hex(4)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        before = [batch(f"{run}-before-{j}", 50) for j in range(4)]
        for body in before:
            assert (await http.post("/webhooks/mitto/dlr", json=body, headers=SECRET)).status_code == 202

        broker.pause()
        during = [batch(f"{run}-during-{j}", 50) for j in range(6)]
        answers = await asyncio.gather(
            *(http.post("/webhooks/mitto/dlr", json=body, headers=SECRET) for body in during)
        )
        assert [a.status_code for a in answers] == [503] * len(during)
        for a in answers:
            assert a.json()["code"] == "BROKER_UNAVAILABLE"
            assert a.headers["Retry-After"] == "1"
        # While the broker is still silent, new requests are refused at once instead of hanging.
        quick = await http.post("/webhooks/mitto/dlr", json=batch(f"{run}-quick", 1), headers=SECRET)
        assert quick.status_code == 503
        assert quick.elapsed.total_seconds() < 1.5

        broker.resume()

        async def retried() -> bool:
            # The provider retries every refused body until it gets a 2xx.
            pending = [b for b in during if b]
            results = await asyncio.gather(
                *(http.post("/webhooks/mitto/dlr", content=orjson.dumps(b), headers=SECRET) for b in pending)
            )
            for body, r in zip(pending, results, strict=True):
                if r.status_code == 202:
                    body.clear()
            return all(not b for b in during)

        await eventually(retried, timeout=60, every=1.0, what="every refused body accepted after recovery")
        after = batch(f"{run}-after", 50)
        assert (await http.post("/webhooks/mitto/dlr", json=after, headers=SECRET)).status_code == 202

    seen = set(await all_message_ids(broker.bootstrap))
    expected = {f"{run}-before-{j}-{i}" for j in range(4) for i in range(50)}
    expected |= {f"{run}-during-{j}-{i}" for j in range(6) for i in range(50)}
    expected |= {f"{run}-after-{i}" for i in range(50)}
    assert expected <= seen, f"{len(expected - seen)} reports missing"
