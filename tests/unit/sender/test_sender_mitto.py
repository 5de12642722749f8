"""Every way a Mitto call can end maps to one outcome: accepted by position, not sent (retry or not), or
ambiguous. Driven by httpx.MockTransport; nothing leaves the process."""

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sender.mitto import Accepted, Ambiguous, Found, LookupFailed, MittoClient, NotSent, Unknown

Handler = Callable[[httpx.Request], httpx.Response]

ITEMS = [
    {"trafficAccountId": "acc", "destination": f"+30694000000{i}", "sms": {"text": "Hi", "sender": "S"}}
    for i in range(3)
]


def client(handler: Handler) -> MittoClient:
    return MittoClient("https://mitto.test", "key-1", transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, content=orjson.dumps(body) if body is not None else b"", headers=headers
        )

    return handle


def raising(exc: type[httpx.HTTPError]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc("scripted", request=request)  # type: ignore[call-arg]

    return handle


async def test_bulk_send_posts_the_items_with_the_api_key_and_reads_results_by_position() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "bulkId": "b-1",
                "messages": [
                    {"messageId": "m0"},
                    {"trafficAccountId": "acc", "error": "invalid destination"},
                    {"messageId": "m2"},
                ],
            },
        )

    outcome = await client(handle).send(ITEMS)

    assert outcome == Accepted("b-1", ("m0", None, "m2"), (None, "invalid destination", None))
    assert seen[0].url.path == "/api/v1.1/Messages/sendmessagesbulk"
    assert seen[0].headers["x-mitto-api-key"] == "key-1"
    assert orjson.loads(seen[0].content) == {"messages": ITEMS}


async def test_an_item_without_message_id_or_reason_still_fails_with_one() -> None:
    outcome = await client(answer(200, {"messages": [{"messageId": ""}, {}, {"messageId": "m"}]})).send(ITEMS)
    assert outcome == Accepted(None, (None, None, "m"), ("no messageId in provider result",) * 2 + (None,))


async def test_one_message_goes_through_the_single_send_endpoint() -> None:
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        assert orjson.loads(request.content) == ITEMS[0]  # unwrapped
        return httpx.Response(200, json={"messages": [{"messageId": "m1"}]})

    assert await client(handle).send(ITEMS[:1]) == Accepted(None, ("m1",), (None,))
    assert paths == ["/api/v1.1/Messages/send"]


async def test_a_refused_single_message_is_not_sent_with_the_providers_reason() -> None:
    outcome = await client(answer(400, {"error": "invalid destination"})).send(ITEMS[:1])
    assert outcome == NotSent(retry=False, error="provider refused (400): invalid destination", status=400)


async def test_429_is_retried_after_retry_after() -> None:
    outcome = await client(answer(429, {"error": "slow down"}, {"Retry-After": "3"})).send(ITEMS)
    assert outcome == NotSent(retry=True, error="provider rate limit (429)", status=429, retry_after=3.0)


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_a_request_that_never_left_is_retried(exc: type[httpx.HTTPError]) -> None:
    outcome = await client(raising(exc)).send(ITEMS)
    assert isinstance(outcome, NotSent)
    assert outcome.retry
    assert outcome.error == f"provider unreachable: {exc.__name__}"


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError]
)
async def test_a_request_that_may_have_been_taken_is_ambiguous(exc: type[httpx.HTTPError]) -> None:
    assert await client(raising(exc)).send(ITEMS) == Ambiguous(f"{exc.__name__} after the request was sent")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_is_ambiguous(status: int) -> None:
    assert await client(answer(status, {"error": "oops"})).send(ITEMS) == Ambiguous(
        f"provider error {status} after the request was sent"
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_other_4xx_fail_without_retry(status: int) -> None:
    outcome = await client(answer(status, {"message": "no"})).send(ITEMS)
    assert outcome == NotSent(retry=False, error=f"provider refused ({status}): no", status=status)


async def test_an_unreadable_200_is_ambiguous() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>proxy</html>")

    assert await client(handle).send(ITEMS) == Ambiguous("unreadable provider answer: JSONDecodeError")


async def test_an_answer_with_a_different_number_of_results_is_ambiguous_and_keeps_its_ids() -> None:
    outcome = await client(answer(200, {"messages": [{"messageId": "m0"}, {"error": "x"}]})).send(ITEMS)
    assert outcome == Ambiguous("provider answered 2 results for 3 messages", ("m0",))


async def test_status_lookup_maps_found_unknown_and_failures() -> None:
    body = {"messageId": "m1", "deliveryStatus": "Delivered", "messageParts": 2, "reference": "c:1"}
    assert await client(answer(200, body)).message_status("m1") == Found("m1", "Delivered", 2, "c:1")
    assert await client(answer(404, {"error": "nope"})).message_status("m1") == Unknown()
    assert await client(answer(503, None, {"Retry-After": "2"})).message_status("m1") == LookupFailed(
        "status lookup answered 503", 2.0
    )
    assert await client(raising(httpx.ReadTimeout)).message_status("m1") == LookupFailed(
        "ReadTimeout during status lookup"
    )
