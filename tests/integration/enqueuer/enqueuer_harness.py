"""An enqueuer running in the test's event loop on a real broker and a real PostgreSQL database of its own,
with the sender's side played by the test: it reads BatchQueued from sms.batches and publishes outcomes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from enqueuer.app import create_app
from enqueuer.settings import EnqueuerSettings
from mitto_sim.testing import serving

from shared.config import KafkaSettings
from shared.events import (
    BatchAmbiguous,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchResolved,
    BatchSent,
    Event,
    RecipientResult,
    decode,
    encode,
    envelope_for,
)
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from shared.topics import SMS_OUTCOMES
from tests.support import eventually, records_of

REPO = Path(__file__).resolve().parents[3]


class Harness:
    def __init__(self, broker: TansuBroker, dsn: str, url: str, operator_key: str) -> None:
        self.broker = broker
        self.dsn = dsn
        self.url = url
        self.operator_key = operator_key
        self.http = httpx.AsyncClient(base_url=url, timeout=120.0)
        self.producer: AIOKafkaProducer | None = None

    async def close(self) -> None:
        await self.http.aclose()
        if self.producer is not None:
            await self.producer.stop()

    async def tenant(self, credits: int = 1_000_000, **extra: Any) -> tuple[str, dict[str, str]]:
        r = await self.http.post(
            "/api/tenants",
            json={"name": f"Shop {secrets.token_hex(3)}", "channel": "retail", "credits": credits, **extra},
            headers={"X-Api-Key": self.operator_key},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body["tenant"]["id"], {"X-Api-Key": body["apiKey"]}

    async def operator(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, headers={"X-Api-Key": self.operator_key}, **kwargs)

    async def credits(self, key: dict[str, str]) -> dict[str, int]:
        r = await self.http.get("/api/tenant", headers=key)
        assert r.status_code == 200, r.text
        return dict(r.json()["credits"])

    async def campaign(self, key: dict[str, str], **body: Any) -> dict[str, Any]:
        r = await self.http.post("/api/campaigns", json={"name": "Sale", **body}, headers=key)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def get(self, key: dict[str, str], campaign_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/campaigns/{campaign_id}", headers=key)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def command(
        self, key: dict[str, str], campaign_id: str, verb: str, **kwargs: Any
    ) -> httpx.Response:
        return await self.http.post(f"/api/campaigns/{campaign_id}/{verb}", headers=key, **kwargs)

    async def db(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": "enqueuer"})
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def batches(self, campaign_id: str, run_token: str | None = None) -> list[BatchQueued]:
        """The BatchQueued events of the campaign in the log (after the outbox relayed them)."""
        out: dict[str, BatchQueued] = {}
        for _, raw in await records_of(self.broker.bootstrap, "sms.batches", campaign_id.encode()):
            _, event = decode(raw)
            assert isinstance(event, BatchQueued)
            if run_token is None or event.run_token == run_token:
                out.setdefault(event.batch_id, event)
        return sorted(out.values(), key=lambda b: (b.run_token, b.batch_no))

    async def all_batches(self, campaign_id: str) -> list[tuple[bytes | None, bytes]]:
        """Every BatchQueued record of the campaign, republications included."""
        return await records_of(self.broker.bootstrap, "sms.batches", campaign_id.encode())

    async def publish_raw(self, topic: str, key: bytes, value: bytes) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
            await self.producer.start()
        await self.producer.send_and_wait(topic, value, key=key)

    async def wait_batches(self, campaign_id: str, run_token: str, count: int) -> list[BatchQueued]:
        async def ready() -> list[BatchQueued] | None:
            found = await self.batches(campaign_id, run_token)
            return found if len(found) >= count else None

        return list(await eventually(ready, timeout=60, what=f"{count} batches of {run_token}"))

    async def publish(self, campaign_id: str, tenant_id: str, *events: Event) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
            await self.producer.start()
        now = datetime.now(UTC)
        for e in events:
            env = envelope_for(e, occurred_at=now, tenant_id=tenant_id, campaign_id=campaign_id)
            await self.producer.send_and_wait(SMS_OUTCOMES, encode(env), key=campaign_id.encode())

    async def publish_together(self, campaign_id: str, tenant_id: str, *events: Event) -> None:
        """Outcomes in one record batch, so that the enqueuer consumes them in one poll (one transaction)."""
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
            await self.producer.start()
        now = datetime.now(UTC)
        batch = self.producer.create_batch()
        for e in events:
            env = envelope_for(e, occurred_at=now, tenant_id=tenant_id, campaign_id=campaign_id)
            assert batch.append(key=campaign_id.encode(), value=encode(env), timestamp=None) is not None
        partitions = sorted(await self.producer.partitions_for(SMS_OUTCOMES))
        partition = DefaultPartitioner()(campaign_id.encode(), partitions, partitions)  # as send() picks it
        await (await self.producer.send_batch(batch, SMS_OUTCOMES, partition=partition))

    async def wait_settled(self, run_token: str, settled: int) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            rows = await self.db("SELECT * FROM runs WHERE run_token = $1", run_token)
            return dict(rows[0]) if rows and rows[0]["settled"] >= settled else None

        return dict(await eventually(done, timeout=60, what=f"run {run_token} settled {settled}"))


def sent(batch: BatchQueued, *, reject: set[str] = frozenset(), parts: int = 1) -> BatchSent:  # type: ignore[assignment]
    return BatchSent(
        batch_id=batch.batch_id,
        run_token=batch.run_token,
        bulk_id="bulk-1",
        results=tuple(
            RecipientResult(id=r.id, phone=r.phone, error="rejected", parts=parts)
            if r.phone in reject
            else RecipientResult(id=r.id, phone=r.phone, message_id=f"m-{r.id}", parts=parts)
            for r in batch.recipients
        ),
        retry_count=0,
        sent_at=datetime.now(UTC),
    )


def _whole(batch: BatchQueued) -> dict[str, Any]:
    """The fields an outcome for every recipient of the batch shares."""
    return {
        "batch_id": batch.batch_id,
        "run_token": batch.run_token,
        "recipient_ids": tuple(r.id for r in batch.recipients),
    }


def failed(batch: BatchQueued) -> BatchFailed:
    return BatchFailed(**_whole(batch), error="refused", retry_count=0, failed_at=datetime.now(UTC))


def ambiguous(batch: BatchQueued) -> BatchAmbiguous:
    return BatchAmbiguous(**_whole(batch), reason="read timeout", retry_count=0, at=datetime.now(UTC))


def operator_failed(batch: BatchQueued) -> BatchResolved:
    """An operator failed every recipient of the ambiguous batch (they may have been delivered)."""
    return BatchResolved(
        batch_id=batch.batch_id,
        run_token=batch.run_token,
        resolution="operator_fail",
        results=tuple(
            RecipientResult(id=r.id, phone=r.phone, error="failed by an operator") for r in batch.recipients
        ),
        remaining=0,
        resolved_at=datetime.now(UTC),
    )


def deferred(batch: BatchQueued, reason: str = "paused") -> BatchDeferred:
    return BatchDeferred(**_whole(batch), reason=reason, at=datetime.now(UTC))


def phones(start: int, count: int) -> list[str]:
    return [f"+30694{n:07d}" for n in range(start, start + count)]


@asynccontextmanager
async def running_enqueuer(name: str, **overrides: Any) -> AsyncIterator[Harness]:
    """A fresh broker, a database named `name`, and the enqueuer app served on a free port."""
    pg = await resolve_server(REPO / ".run" / "pgdata")
    broker = TansuBroker()
    broker.start()
    dsn = await pg.create_database(name)
    operator_key = secrets.token_urlsafe(16)
    settings = EnqueuerSettings(
        database_url=dsn,
        operator_api_key=operator_key,
        kafka=KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            partitions=2,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        ),
        **{"loop_interval_s": 0.2, "batch_size": 5, **overrides},
    )
    try:
        async with serving(create_app(settings)) as url:
            h = Harness(broker, dsn, url, operator_key)
            try:
                yield h
            finally:
                await h.close()
    finally:
        broker.stop()
        await pg.drop_database(name)
        pg.stop()
