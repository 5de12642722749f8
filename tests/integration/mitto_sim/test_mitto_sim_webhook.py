"""The webhook client against a raw TCP server: framing of answers, kept-alive and closed connections, errors."""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from mitto_sim.webhook import WebhookClient, WebhookError

OK = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok"


class RawServer:
    """Reads requests framed by content-length and answers each with `answer(request number)`; None closes
    the connection instead."""

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[tuple[list[str], bytes]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")[:-2]
                length = next(int(h.split(":")[1]) for h in head if h.lower().startswith("content-length:"))
                self.requests.append((head, await reader.readexactly(length)))
                answer = self.answer(len(self.requests))
                if answer is None:
                    writer.close()
                    return
                writer.write(answer)  # b"": no answer at all, the connection held open
                await writer.drain()
                if answer.startswith(b"HTTP/1.0") or b"connection: close" in answer:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@asynccontextmanager
async def raw_server(answer: Callable[[int], bytes | None]) -> AsyncIterator[tuple[str, RawServer]]:
    server = RawServer(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/webhooks/dlr?x=1", server
    finally:
        listener.close()


@pytest.fixture
def client() -> WebhookClient:
    return WebhookClient(connect_timeout_s=1.0, timeout_s=0.5)


async def test_posts_go_out_whole_on_one_kept_alive_connection(client: WebhookClient) -> None:
    async with raw_server(lambda _: OK) as (url, server):
        for n in range(3):
            assert await client.post(url, b'[{"n": %d}]' % n, {"X-Webhook-Secret": "s3cret"}) == 202
    assert server.connections == 1
    head, body = server.requests[2]
    assert head[0] == "POST /webhooks/dlr?x=1 HTTP/1.1"
    assert {"Content-Type: application/json", "X-Webhook-Secret: s3cret", "Content-Length: 10"} <= set(head)
    assert body == b'[{"n": 2}]'
    client.close()


async def test_a_content_type_among_the_headers_replaces_the_default(client: WebhookClient) -> None:
    async with raw_server(lambda _: OK) as (url, server):
        await client.post(url, b"{}", {"content-type": "application/vnd.mitto+json"})
    head = server.requests[0][0]
    assert [h for h in head if h.lower().startswith("content-type")] == [
        "content-type: application/vnd.mitto+json"
    ]
    client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n",
    ],
)
async def test_answers_of_every_framing_are_read_and_the_connection_kept(
    client: WebhookClient, answer: bytes
) -> None:
    status = int(answer.split(b"\r\n\r\n")[-2 if b"100" in answer else 0].split(b" ")[1])
    async with raw_server(lambda _: answer) as (url, server):
        assert [await client.post(url, b"[]", {}) for _ in range(2)] == [status, status]
    assert server.connections == 1
    client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nbody until the connection closes",
    ],
)
async def test_an_answer_that_closes_the_connection_is_read_and_the_next_post_reconnects(
    client: WebhookClient, answer: bytes
) -> None:
    async with raw_server(lambda _: answer) as (url, server):
        assert [await client.post(url, b"[]", {}) for _ in range(2)] == [200, 200]
    assert server.connections == 2
    client.close()


async def test_a_connection_closed_by_the_server_while_idle_is_replaced_without_an_error(
    client: WebhookClient,
) -> None:
    async with raw_server(lambda n: OK if n != 2 else None) as (url, server):
        assert await client.post(url, b"[]", {}) == 202
        # The server drops the second request's connection without answering: the client resends it on
        # a new connection, since no byte of an answer had come.
        assert await client.post(url, b"[]", {}) == 202
    assert server.connections == 2
    assert len(server.requests) == 3
    client.close()


async def test_no_server_no_answer_or_no_http_are_errors(client: WebhookClient) -> None:
    async with raw_server(lambda _: OK) as (url, _server):
        pass
    with pytest.raises(ConnectionRefusedError):
        await client.post(url, b"[]", {})
    async with raw_server(lambda _: b"") as (url, _server):
        with pytest.raises(TimeoutError):
            await client.post(url, b"[]", {})
    async with raw_server(lambda _: b"SMTP ready\r\n\r\n") as (url, _server):
        with pytest.raises(WebhookError, match="malformed answer"):
            await client.post(url, b"[]", {})
    with pytest.raises(WebhookError, match="invalid header"):
        await client.post(url, b"[]", {"X-Bad": "a\r\nb"})
    with pytest.raises(WebhookError, match="not an http"):
        await client.post("ftp://127.0.0.1/x", b"[]", {})
    client.close()
