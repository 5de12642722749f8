"""The delivery-report webhook on the real broker: what a 202 puts in the log, and what every refusal keeps out.

The app runs with every check on at once: shared secret (two, as during a rotation), HMAC signature with a
timestamp (two keys), a source allow-list.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio
from dlr_ingest.app import create_app
from dlr_ingest.auth import sign
from dlr_ingest.settings import DlrIngestSettings
from mitto_sim.testing import serving

from shared.config import KafkaSettings
from shared.events import DeliveryReported, decode
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import end_offsets, records_of

SECRETS = ["secret-before-rotation", "secret-after-rotation"]
KEYS = ["hmac-before-rotation", "hmac-after-rotation"]
TOPIC = "delivery.reports"


@pytest_asyncio.fixture(scope="module")
async def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


@pytest_asyncio.fixture(scope="module")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_webhook_{secrets.token_hex(4)}"
    try:
        yield await server.create_database(name)
    finally:
        await server.drop_database(name)
        server.stop()


def settings_for(broker: TansuBroker, database_url: str, **overrides: object) -> DlrIngestSettings:
    options: dict[str, object] = {
        "database_url": database_url,
        "kafka": KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
        "webhook_secrets": SECRETS,
        "webhook_hmac_secrets": KEYS,
        "webhook_allowed_cidrs": ["127.0.0.0/8"],
        "max_body_bytes": 64 * 1024,
        "max_reports_per_request": 200,
    }
    return DlrIngestSettings(**{**options, **overrides})  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module")
async def url(broker: TansuBroker, database_url: str) -> AsyncIterator[str]:
    async with serving(create_app(settings_for(broker, database_url))) as base:
        yield base


@pytest_asyncio.fixture
async def http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def headers(
    body: bytes, *, secret: str = SECRETS[0], key: str = KEYS[0], at: float | None = None
) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {
        "X-Webhook-Secret": secret,
        "X-Timestamp": stamp,
        "X-Signature": sign(key.encode(), stamp, body),
        "Content-Type": "application/json",
    }


async def post(http: httpx.AsyncClient, payload: object, **kw: object) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return await http.post("/webhooks/mitto/dlr", content=body, headers=headers(body, **kw))  # type: ignore[arg-type]


def new_id() -> str:
    return "MSG" + secrets.token_hex(10).upper()


async def reported(broker: TansuBroker, message_id: str) -> list[DeliveryReported]:
    out = []
    for key, value in await records_of(broker.bootstrap, TOPIC, message_id.encode()):
        assert key == message_id.encode()
        _, event = decode(value)
        assert isinstance(event, DeliveryReported)
        out.append(event)
    return out


async def total(broker: TansuBroker) -> int:
    return sum((await end_offsets(broker.bootstrap, [TOPIC])).values())


async def test_one_report_is_in_the_log_keyed_by_its_message_id_before_the_202(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    mid = new_id()
    r = await post(
        http, {"messageId": mid, "deliveryStatus": "Delivered", "updatedAt": "2025-12-11T08:50:10Z"}
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1}
    (event,) = await reported(broker, mid)
    assert (event.raw_status, event.status, event.source) == ("Delivered", "delivered", "webhook")
    assert event.provider_time is not None


async def test_an_array_with_both_spellings_and_every_family_is_published_whole(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    rows = [
        ("Delivered", "delivered"),
        ("Failure", "failed"),
        ("EXPIRED", "failed"),
        ("rejected", "failed"),
        ("Sent", "sent"),
        ("queued", "sent"),
        ("Quantum-Limbo", "unknown"),
    ]
    ids = [new_id() for _ in rows]
    payload = [
        {"messageId": mid, "deliveryStatus": raw, "error": "x"}
        if i % 2
        else {"messageId": mid, "status": raw, "errorcode": 7}
        for i, (mid, (raw, _)) in enumerate(zip(ids, rows, strict=True))
    ]
    r = await post(http, payload)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(rows)}
    for mid, (raw, mapped) in zip(ids, rows, strict=True):
        (event,) = await reported(broker, mid)
        assert (event.raw_status, event.status.value) == (raw, mapped)
    metrics = (await http.get("/metrics")).text
    assert 'dlr_reports_received_total{status="unknown"}' in metrics


async def test_a_body_large_enough_to_be_compressed_is_in_the_log_whole(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    # At least PRODUCER_COMPRESS_FROM_REPORTS reports: the record batches this body opens are lz4.
    ids = [
        new_id() for _ in range(DlrIngestSettings.model_fields["producer_compress_from_reports"].default * 3)
    ]
    r = await post(http, [{"messageId": mid, "deliveryStatus": "Delivered"} for mid in ids])
    assert r.status_code == 202, r.text
    for mid in ids:
        (event,) = await reported(broker, mid)
        assert event.raw_status == "Delivered"


async def test_a_duplicate_is_accepted_again_and_simply_published_twice(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    mid = new_id()
    # Signed a second apart: the same signature twice would be a replay (refused, see below).
    for at in (time.time() - 1, time.time()):
        assert (
            await post(http, [{"messageId": mid, "deliveryStatus": "Delivered"}], at=at)
        ).status_code == 202
    assert len(await reported(broker, mid)) == 2


@pytest.mark.parametrize(("secret", "key"), [(SECRETS[0], KEYS[1]), (SECRETS[1], KEYS[0])])
async def test_either_secret_and_either_key_of_a_rotation_is_accepted(
    http: httpx.AsyncClient, broker: TansuBroker, secret: str, key: str
) -> None:
    mid = new_id()
    r = await post(http, {"messageId": mid, "deliveryStatus": "Sent"}, secret=secret, key=key)
    assert r.status_code == 202, r.text
    assert len(await reported(broker, mid)) == 1


async def refused(
    http: httpx.AsyncClient, broker: TansuBroker, body: bytes, hdrs: dict[str, str], status: int, code: str
) -> None:
    before = await total(broker)
    r = await http.post("/webhooks/mitto/dlr", content=body, headers=hdrs)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert r.json()["message"]
    assert await total(broker) == before


def body_of(mid: str) -> bytes:
    return orjson.dumps([{"messageId": mid, "deliveryStatus": "Delivered"}])


async def test_a_wrong_or_missing_secret_is_401_and_publishes_nothing(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    body = body_of(new_id())
    await refused(http, broker, body, headers(body, secret="retired-secret"), 401, "UNAUTHORIZED")
    no_secret = {k: v for k, v in headers(body).items() if k != "X-Webhook-Secret"}
    await refused(http, broker, body, no_secret, 401, "UNAUTHORIZED")


async def test_a_forged_signature_is_401_and_publishes_nothing(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    body = body_of(new_id())
    await refused(http, broker, body, headers(body, key="guessed-key"), 401, "BAD_SIGNATURE")
    tampered = headers(body)
    await refused(http, broker, body.replace(b"Delivered", b"Failure"), tampered, 401, "BAD_SIGNATURE")
    unsigned = {k: v for k, v in headers(body).items() if k != "X-Signature"}
    await refused(http, broker, body, unsigned, 401, "SIGNATURE_REQUIRED")


async def test_a_replayed_signature_is_401_and_publishes_nothing(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    mid = new_id()
    body = body_of(mid)
    signed = headers(body)
    assert (await http.post("/webhooks/mitto/dlr", content=body, headers=signed)).status_code == 202
    await refused(http, broker, body, signed, 401, "REPLAYED_SIGNATURE")
    assert len(await reported(broker, mid)) == 1


async def test_an_old_signed_request_is_401_and_publishes_nothing(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    body = body_of(new_id())
    await refused(http, broker, body, headers(body, at=time.time() - 301), 401, "STALE_TIMESTAMP")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{oops", "MALFORMED_JSON"),
        (b"[]", "EMPTY_BATCH"),
        (b'{"messageId": "x"}', "INVALID_REPORT"),
        (b'[{"messageId": "x", "deliveryStatus": "Sent"}, 7]', "INVALID_REPORT"),
    ],
)
async def test_a_bad_body_is_400_with_its_code_and_publishes_nothing(
    http: httpx.AsyncClient, broker: TansuBroker, body: bytes, code: str
) -> None:
    await refused(http, broker, body, headers(body), 400, code)


async def test_too_many_reports_or_too_many_bytes_are_refused(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    many = orjson.dumps([{"messageId": new_id(), "deliveryStatus": "Sent"} for _ in range(201)])
    await refused(http, broker, many, headers(many), 400, "TOO_MANY_REPORTS")
    big = orjson.dumps(
        [{"messageId": new_id(), "deliveryStatus": "Sent", "error": "e" * 400} for _ in range(190)]
    )
    assert len(big) > 64 * 1024
    await refused(http, broker, big, headers(big), 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_bodies_are_bounded_while_they_stream(
    http: httpx.AsyncClient, broker: TansuBroker
) -> None:
    before = await total(broker)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"["
        for _ in range(2000):
            yield b'{"messageId": "x", "deliveryStatus": "Sent"},'
        yield b'{"messageId": "x", "deliveryStatus": "Sent"}]'

    r = await http.post("/webhooks/mitto/dlr", content=chunks(), headers=headers(b""))
    assert r.status_code == 413
    assert await total(broker) == before


async def test_the_allow_list_follows_forwarded_for_only_from_trusted_proxies(
    broker: TansuBroker, database_url: str
) -> None:
    settings = settings_for(
        broker,
        database_url,
        webhook_allowed_cidrs=["10.0.0.0/8"],
        webhook_trusted_proxy_cidrs=["127.0.0.1/32"],
        webhook_hmac_secrets=[],
        http_port=0,
    )
    mid = new_id()
    body = body_of(mid)
    secret = {"X-Webhook-Secret": SECRETS[1]}
    async with serving(create_app(settings)) as base, httpx.AsyncClient(base_url=base) as client:
        before = await total(broker)
        direct = await client.post("/webhooks/mitto/dlr", content=body, headers=secret)
        assert (direct.status_code, direct.json()["code"]) == (401, "SOURCE_NOT_ALLOWED")
        outside = await client.post(
            "/webhooks/mitto/dlr",
            content=body,
            headers={**secret, "X-Forwarded-For": "10.1.1.1, 203.0.113.5"},
        )
        assert (outside.status_code, outside.json()["code"]) == (401, "SOURCE_NOT_ALLOWED")
        assert await total(broker) == before
        inside = await client.post(
            "/webhooks/mitto/dlr",
            content=body,
            headers={**secret, "X-Forwarded-For": "203.0.113.5, 10.1.1.1"},
        )
        assert inside.status_code == 202, inside.text
    assert len(await reported(broker, mid)) == 1


async def test_metrics_count_received_rejected_and_publish_latency(http: httpx.AsyncClient) -> None:
    text = (await http.get("/metrics")).text
    assert 'dlr_reports_received_total{status="delivered"}' in text
    assert 'dlr_requests_rejected_total{reason="BAD_SIGNATURE"}' in text
    assert "dlr_publish_seconds_count" in text
    assert "dlr_publish_backlog_bytes 0.0" in text
