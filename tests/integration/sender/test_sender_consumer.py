"""The sender service as it runs: its consumers on the real broker, the outbox relay, dead letters, pause
from campaign.events, and the operator endpoints, against PostgreSQL and the simulator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from fastapi import FastAPI
from sender.app import create_app

from shared.config import KafkaSettings
from shared.events import CampaignPaused, decode, encode, envelope_for
from shared.infra.tansu import TansuBroker
from tests.integration.sender.sender_builders import Ledger, a_batch, ledger, new_campaign, phones
from tests.support import eventually

OPERATOR_KEY = "op-key-for-tests"


@dataclass
class Service:
    lg: Ledger
    broker: TansuBroker
    app: FastAPI
    http: httpx.AsyncClient
    producer: AIOKafkaProducer


@pytest.fixture(scope="module")
async def svc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    with TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "broker.log") as broker:
        async with ledger("consumer") as lg:
            settings = lg.settings(
                operator_api_key=OPERATOR_KEY,
                resolver_interval_s=0.5,
                kafka=KafkaSettings(
                    bootstrap_servers=broker.bootstrap,
                    partitions=2,
                    session_timeout_ms=6000,
                    heartbeat_interval_ms=1000,
                ),
            )
            app = create_app(settings)
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=8 * 1024 * 1024)
            async with app.router.lifespan_context(app):
                await producer.start()
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://sender") as http:
                    yield Service(lg, broker, app, http, producer)
                await producer.stop()


@pytest.fixture(autouse=True)
async def quiet_sim(svc: Service) -> None:
    await svc.lg.sim_config(
        latency_ms=0, reject_share=0.0, http_429_share=0.0, http_500_share=0.0, timeout_share=0.0
    )


async def publish(svc: Service, topic: str, key: str, value: bytes) -> None:
    await svc.producer.send_and_wait(topic, value, key=key.encode())


async def records(svc: Service, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=svc.broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                out += recs
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return out
    finally:
        await consumer.stop()


async def outcome_types(svc: Service, campaign: str) -> list[str]:
    return [decode(r.value)[0].type for r in await records(svc, "sms.outcomes") if r.key == campaign.encode()]


async def test_a_queued_batch_is_sent_and_its_outcome_published_once_even_when_redelivered(
    svc: Service,
) -> None:
    campaign = new_campaign()
    raw = a_batch(campaign, phones(10_000, 40))[2]
    await publish(svc, "sms.batches", campaign, raw)
    await eventually(
        lambda: _has(svc, campaign, ["BatchClaimed", "BatchSent"]), timeout=60, what="BatchSent published"
    )

    await publish(svc, "sms.batches", campaign, raw)  # the outbox is at-least-once; so is anyone's replay
    await eventually(
        lambda: _has(svc, campaign, ["BatchClaimed", "BatchSent", "BatchSent"]),
        timeout=60,
        what="re-emission",
    )
    sends = await svc.lg.sim_get(f"/sim/sends?campaign={campaign}")
    assert (sends["sends"], sends["max_per_phone"]) == (40, 1)


async def _has(svc: Service, campaign: str, expected: list[str]) -> bool:
    return await outcome_types(svc, campaign) == expected


async def test_what_cannot_be_handled_goes_to_the_dead_letter_topic_with_the_reason(svc: Service) -> None:
    campaign = new_campaign()
    wrong = encode(
        envelope_for(
            CampaignPaused(run_token="r", paused_at=datetime.now(UTC)),
            occurred_at=datetime.now(UTC),
            tenant_id="t",
            campaign_id=campaign,
        )
    )
    _, _, not_a_uuid = a_batch("not-a-campaign-uuid", phones(11_000, 2))
    await publish(svc, "sms.batches", campaign, b"{broken json")
    await publish(svc, "sms.batches", campaign, wrong)
    await publish(svc, "sms.batches", "not-a-campaign-uuid", not_a_uuid)

    async def reasons() -> list[str]:
        found = []
        for r in await records(svc, "dlq.sender"):
            headers = dict(r.headers)
            if r.value in (b"{broken json", wrong, not_a_uuid):
                found.append(headers["dlq-reason"].decode())
        return found if len(found) == 3 else []

    got = sorted(await eventually(reasons, timeout=60, what="three dead letters"))
    assert got[0].startswith("cannot claim the batch: DataError")
    assert got[1].startswith("not an event envelope")
    assert got[2] == "unexpected CampaignPaused on sms.batches"


async def test_a_pause_on_campaign_events_defers_the_batches_not_yet_sent(svc: Service) -> None:
    campaign = new_campaign()
    paused = encode(
        envelope_for(
            CampaignPaused(run_token="run-1", paused_at=datetime.now(UTC)),
            occurred_at=datetime.now(UTC),
            tenant_id="t",
            campaign_id=campaign,
        )
    )
    await publish(svc, "campaign.events", campaign, paused)

    async def control_seen() -> bool:
        async with svc.lg.pool.acquire() as conn:
            return (
                await conn.fetchval("SELECT status FROM campaign_control WHERE campaign_id = $1", campaign)
                == "paused"
            )

    await eventually(control_seen, timeout=60, what="the pause applied")
    await publish(svc, "sms.batches", campaign, a_batch(campaign, phones(12_000, 5))[2])
    await eventually(lambda: _has(svc, campaign, ["BatchDeferred"]), timeout=60, what="BatchDeferred")
    assert (await svc.lg.sim_get(f"/sim/sends?campaign={campaign}"))["sends"] == 0


async def test_operator_endpoints_need_the_key_and_answer_errors_with_codes(svc: Service) -> None:
    anonymous = await svc.http.get("/api/operator/ambiguous-batches")
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "UNAUTHORIZED")
    wrong = await svc.http.get("/api/operator/ambiguous-batches", headers={"X-Api-Key": "nope"})
    assert wrong.status_code == 401

    key = {"X-Api-Key": OPERATOR_KEY}
    missing = await svc.http.post(
        f"/api/operator/ambiguous-batches/{uuid.uuid4()}:r:0/resolve", json={"action": "fail"}, headers=key
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "BATCH_NOT_FOUND")
    bad = await svc.http.post(
        "/api/operator/ambiguous-batches/x/resolve", json={"action": "retry"}, headers=key
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "VALIDATION_ERROR")
    limit = await svc.http.get("/api/operator/ambiguous-batches?limit=0", headers=key)
    assert (limit.status_code, limit.json()["code"]) == (400, "VALIDATION_ERROR")


async def test_an_ambiguous_batch_is_listed_and_resent_by_the_operator_over_http(svc: Service) -> None:
    await svc.lg.sim_config(http_500_share=1.0, http_500_after_accept=False)
    campaign = new_campaign()
    _, batch, raw = a_batch(campaign, phones(13_000, 7))
    await publish(svc, "sms.batches", campaign, raw)
    await eventually(
        lambda: _has(svc, campaign, ["BatchClaimed", "BatchAmbiguous"]), timeout=60, what="ambiguous"
    )
    await svc.lg.sim_config(http_500_share=0.0, http_500_after_accept=True)
    key = {"Authorization": f"Bearer {OPERATOR_KEY}"}

    listed = (await svc.http.get("/api/operator/ambiguous-batches", headers=key)).json()
    mine = [b for b in listed["items"] if b["campaignId"] == campaign]
    assert [(b["batchId"], b["recipients"], b["reason"]) for b in mine] == [
        (batch.batch_id, 7, "provider error 500 after the request was sent")
    ]
    shown = (await svc.http.get(f"/api/operator/ambiguous-batches/{batch.batch_id}", headers=key)).json()
    assert [m["id"] for m in shown["members"]] == [r.id for r in batch.recipients]

    done = await svc.http.post(
        f"/api/operator/ambiguous-batches/{batch.batch_id}/resolve", json={"action": "resend"}, headers=key
    )
    assert done.status_code == 200, done.text
    assert (done.json()["accepted"], done.json()["stillAmbiguous"]) == (7, 0)
    again = await svc.http.post(
        f"/api/operator/ambiguous-batches/{batch.batch_id}/resolve", json={"action": "fail"}, headers=key
    )
    assert (again.status_code, again.json()["code"]) == (409, "NOT_AMBIGUOUS")
    await eventually(
        lambda: _has(svc, campaign, ["BatchClaimed", "BatchAmbiguous", "BatchResolved"]),
        timeout=60,
        what="resolved",
    )
    sends = await svc.lg.sim_get(f"/sim/sends?campaign={campaign}")
    assert (sends["sends"], sends["max_per_phone"]) == (7, 1)


async def test_metrics_expose_batches_and_ambiguous_recipients(svc: Service) -> None:
    text = (await svc.http.get("/metrics")).text
    assert 'sender_batches_total{status="sent"}' in text
    assert "sender_ambiguous_recipients" in text
