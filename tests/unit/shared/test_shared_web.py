from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from shared.web import ApiError, install_common


@pytest.fixture
def client() -> tuple[TestClient, CollectorRegistry]:
    app = FastAPI()
    registry = CollectorRegistry()

    async def never_ready() -> bool:
        return False

    install_common(app, registry=registry, readiness={"database": never_ready})

    @app.get("/items/{n}")
    async def item(n: int) -> dict[str, int]:
        if n == 0:
            raise ApiError(409, "ITEM_LOCKED", "The item is locked.", holder="someone", retry_after=3)
        return {"n": n}

    return TestClient(app), registry


def test_a_request_id_is_echoed_or_made(client: tuple[TestClient, CollectorRegistry]) -> None:
    http, _ = client
    assert http.get("/items/1", headers={"X-Request-Id": "abc"}).headers["x-request-id"] == "abc"
    assert len(http.get("/items/1").headers["x-request-id"]) == 32


def test_a_refusal_has_a_stable_code_a_message_the_request_id_and_retry_after(
    client: tuple[TestClient, CollectorRegistry],
) -> None:
    http, _ = client
    r = http.get("/items/0")
    assert r.status_code == 409
    assert r.json() == {
        "code": "ITEM_LOCKED",
        "message": "The item is locked.",
        "requestId": r.headers["x-request-id"],
        "holder": "someone",
    }
    assert r.headers["retry-after"] == "3"


def test_bad_input_and_unknown_routes_are_4xx_with_codes(
    client: tuple[TestClient, CollectorRegistry],
) -> None:
    http, _ = client
    bad = http.get("/items/abc")
    assert bad.status_code == 400
    assert bad.json()["code"] == "VALIDATION_ERROR"
    assert bad.json()["errors"][0]["field"] == "path.n"
    missing = http.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NOT_FOUND"


def test_health_readiness_and_metrics(client: tuple[TestClient, CollectorRegistry]) -> None:
    http, registry = client
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "checks": {"database": False}}
    http.get("/items/5")
    text = generate_latest(registry).decode()
    assert 'http_request_seconds_count{method="GET",route="/items/{n}",status="200"} 1.0' in text
    assert "http_request_seconds" in http.get("/metrics").text
