"""10,000 random bad payloads against the real app and broker: every answer is a 4xx with a code, and the
log does not grow by a single record.

Hypothesis generates the bodies (every one invalid by construction, without asking the parser under test);
they are then posted through the ASGI interface of the running app, with its real producer and broker.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from dlr_ingest.app import create_app
from dlr_ingest.auth import sign
from dlr_ingest.settings import DlrIngestSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import KafkaSettings
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import end_offsets

EXAMPLES = 10_000
MAX_REPORTS = 20
MAX_BYTES = 4096
SECRET = "fuzz-secret"
KEY = "fuzz-hmac-key"

# Strategies are built once at import: building them inside every draw costs more than the draw.
ints = st.integers(-(2**63), 2**63 - 1)  # what JSON encoders agree on
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=6,
)
non_strings = json_values.filter(lambda v: not isinstance(v, str))
non_objects = json_values.filter(lambda v: not isinstance(v, dict))
statuses = st.sampled_from(["Delivered", "Failure", "Sent", "expired", "Limbo"]) | st.text(
    min_size=1, max_size=64
).filter(str.strip)
message_ids = st.text(min_size=1, max_size=100).filter(str.strip)
status_keys = st.sampled_from(["deliveryStatus", "status"])
time_keys = st.sampled_from(["updatedAt", "timestamp"])
error_keys = st.sampled_from(["error", "errorcode", "description"])
errors = st.text(max_size=20) | ints
bad_ids = (
    st.sampled_from(["", "   "])
    | st.text(min_size=101, max_size=120).filter(lambda t: len(t.strip()) > 100)
    | non_strings
)
bad_statuses = (
    st.sampled_from(["", " "])
    | st.text(min_size=65, max_size=80).filter(lambda t: len(t.strip()) > 64)
    | non_strings
)
bad_times = (
    st.sampled_from(["2025-12-11T08:50:10", "yesterday", "2025-13-01T00:00:00Z"])
    | st.text(min_size=1, max_size=20).map(lambda t: "x" + t)
    | ints
    | st.lists(ints, min_size=1, max_size=3)
)
bad_errors = (
    st.booleans()
    | floats
    | st.lists(ints, min_size=1, max_size=3)
    | st.dictionaries(st.text(max_size=5), ints, min_size=1, max_size=3)
)
ways = st.sampled_from(["id", "no-id", "status", "no-status", "time", "error"])
kinds = st.sampled_from(
    ["bytes", "scalar", "empty", "no-id", "broken", "broken-in-array", "too-many", "too-big"]
)
credentials = st.sampled_from(["signed"] * 8 + ["no-secret", "forged"])
junk = st.binary(max_size=200)
scalars = st.none() | st.booleans() | ints | st.text(max_size=30)
objects_without_id = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k != "messageId"), json_values, max_size=5
)


@st.composite
def good_report(draw: st.DrawFn) -> dict[str, Any]:
    report: dict[str, Any] = {"messageId": draw(message_ids), draw(status_keys): draw(statuses)}
    if draw(st.booleans()):
        report[draw(time_keys)] = "2025-12-11T08:50:10Z"
    if draw(st.booleans()):
        report[draw(error_keys)] = draw(errors)
    return report


good_reports = good_report()


def not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return True
    return False


@st.composite
def broken_report(draw: st.DrawFn) -> dict[str, Any]:
    """A report with exactly one field made invalid."""
    report = draw(good_reports)
    status_key = "deliveryStatus" if "deliveryStatus" in report else "status"
    way = draw(ways)
    if way == "id":
        report["messageId"] = draw(bad_ids)
    elif way == "no-id":
        del report["messageId"]
    elif way == "status":
        report[status_key] = draw(bad_statuses)
    elif way == "no-status":
        del report[status_key]
    elif way == "time":
        report.pop("timestamp", None)
        report["updatedAt"] = draw(bad_times)
    else:
        for k in ("error", "errorcode", "description"):
            report.pop(k, None)
        report["error"] = draw(bad_errors)
    return report


broken_reports = broken_report()
bad_items = broken_reports | non_objects


@st.composite
def bad_body(draw: st.DrawFn) -> bytes:
    kind = draw(kinds)
    if kind == "bytes":
        raw: bytes = draw(junk.filter(not_json))
        return raw
    if kind == "scalar":
        return orjson.dumps(draw(scalars))
    if kind == "empty":
        return b"[]"
    if kind == "no-id":
        return orjson.dumps(draw(objects_without_id))
    if kind == "broken":
        return orjson.dumps(draw(broken_reports))
    if kind == "broken-in-array":
        items: list[Any] = [draw(good_reports) for _ in range(draw(few))]
        items.insert(draw(st.integers(0, len(items))), draw(bad_items))
        return orjson.dumps(items)
    if kind == "too-many":
        one = draw(good_reports)
        count = draw(too_many)
        return orjson.dumps([{**one, "messageId": f"{one['messageId']}-{i}"} for i in range(count)])
    return orjson.dumps([{"messageId": "m", "deliveryStatus": "Sent", "error": "e" * MAX_BYTES}])


bad_bodies = bad_body()
few = st.integers(0, 4)
too_many = st.integers(MAX_REPORTS + 1, MAX_REPORTS + 5)


@st.composite
def bad_request(draw: st.DrawFn) -> tuple[bytes, str]:
    """A bad body, signed correctly (so that it reaches the parser) or with a bad credential."""
    return draw(bad_bodies), draw(credentials)


def collect() -> list[tuple[bytes, str]]:
    found: list[tuple[bytes, str]] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(bad_request())
    def gather(example: tuple[bytes, str]) -> None:
        found.append(example)

    gather()
    return found


@pytest_asyncio.fixture(scope="module")
async def broker() -> AsyncIterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


def headers(body: bytes, how: str) -> dict[str, str]:
    stamp = str(int(time.time()))
    key = KEY if how != "forged" else "not-the-key"
    out = {
        "X-Timestamp": stamp,
        "X-Signature": sign(key.encode(), stamp, body),
        "Content-Type": "application/json",
    }
    if how != "no-secret":
        out["X-Webhook-Secret"] = SECRET
    return out


async def test_ten_thousand_bad_payloads_get_only_4xx_and_publish_nothing(
    broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    examples = collect()
    assert len(examples) >= EXAMPLES * 0.9  # hypothesis may stop early only once it ran out of new examples
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_fuzz_{secrets.token_hex(4)}"
    app = create_app(
        DlrIngestSettings(
            database_url=await server.create_database(name),
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3),
            webhook_secrets=[SECRET],
            webhook_hmac_secrets=[KEY],
            max_reports_per_request=MAX_REPORTS,
            max_body_bytes=MAX_BYTES,
        )
    )
    codes: Counter[tuple[int, str]] = Counter()
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://dlr") as http:
                before = await end_offsets(broker.bootstrap, ["delivery.reports"])
                for body, how in examples:
                    r = await http.post("/webhooks/mitto/dlr", content=body, headers=headers(body, how))
                    assert 400 <= r.status_code < 500, (r.status_code, r.text, body)
                    problem = r.json()
                    assert problem["code"], body
                    assert problem["message"], body
                    codes[(r.status_code, problem["code"])] += 1
                after = await end_offsets(broker.bootstrap, ["delivery.reports"])
    finally:
        await server.drop_database(name)
        server.stop()
    assert sum(after.values()) == sum(before.values()), "a refused request published something"
    # Every family of refusal was exercised.
    assert {c for _, c in codes} >= {
        "MALFORMED_JSON",
        "EMPTY_BATCH",
        "INVALID_REPORT",
        "TOO_MANY_REPORTS",
        "PAYLOAD_TOO_LARGE",
        "UNAUTHORIZED",
        "BAD_SIGNATURE",
    }, codes
