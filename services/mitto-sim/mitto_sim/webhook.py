"""A lean HTTP/1.1 client for POSTing delivery-report batches to the webhook.

The dispatcher posts one batch at a time to one URL, so one kept-alive connection is all it needs. httpx
(over httpcore and anyio) spent about 2 ms of CPU per POST, more than encoding the 500 reports it carried;
here the request goes out in one write and httptools, uvicorn's parser, reads the answer.
"""

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import quote, urlsplit

import httptools

# A connection idle longer is not reused: servers close idle ones (uvicorn after 5 s).
KEEPALIVE_S = 2.0
_PATH_SAFE = "/?&=%:@!$'()*+,;~"


class WebhookError(Exception):
    """No usable answer: the connection closed before one, or it was not HTTP."""


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    request_line: str  # "POST /path HTTP/1.1\r\nHost: ...\r\n"


@lru_cache(maxsize=16)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    path = quote(parts.path or "/", safe=_PATH_SAFE) + (
        f"?{quote(parts.query, safe=_PATH_SAFE)}" if parts.query else ""
    )
    authority = parts.netloc.rpartition("@")[2]
    line = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
    return _Target(parts.hostname, parts.port or (443 if tls else 80), tls, line)


def _header_lines(headers: Mapping[str, str]) -> str:
    """`content-type: application/json` unless `headers` names one, then `headers`, one per line."""
    merged = {"content-type": ("Content-Type", "application/json")}
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
            raise WebhookError(f"invalid header {name!r}")
        merged[name.lower()] = (name, value)
    return "".join(f"{name}: {value}\r\n" for name, value in merged.values())


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time. httptools calls the `on_*` methods while parsing."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[int] | None = None
        self._status = 0
        self.received = False  # any byte of the current exchange's answer
        self.usable = True
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            self.close()  # nothing asked: the connection is out of step
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(WebhookError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        self._closed()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            self._status = 0  # an interim answer: the final one follows
            return
        if not self._parser.should_keep_alive():
            self.usable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(self._status)

    def _closed(self) -> None:
        self.usable = False
        if self._answer is not None and not self._answer.done():
            if self._status:  # headers read: a body without length ends with the connection
                self._answer.set_result(self._status)
            else:
                self._answer.set_exception(WebhookError("connection closed before an answer"))

    def _fail(self, error: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)
        self.close()

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()

    async def exchange(self, request: bytes) -> int:
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._status, self.received = 0, False
        try:
            self._transport.write(request)
            return await self._answer
        except BaseException:
            self.close()  # cancelled or failed half-way: the stream's state is unknown
            raise
        finally:
            self._answer = None
            self.idle_since = time.monotonic()


class WebhookClient:
    """POSTs bodies over one kept-alive connection per URL (a new URL replaces it)."""

    def __init__(self, connect_timeout_s: float, timeout_s: float) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connected_to: _Target | None = None
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The status code of the answer. Raises WebhookError, OSError or TimeoutError without one."""
        target = _target(url)
        request = (
            f"{target.request_line}{_header_lines(headers)}Content-Length: {len(body)}\r\n"
            "User-Agent: mitto-sim\r\n\r\n"
        ).encode("ascii") + body
        connection = self._connection
        if (
            connection is not None
            and connection.usable
            and self._connected_to == target
            and time.monotonic() - connection.idle_since < KEEPALIVE_S
        ):
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await connection.exchange(request)
            except TimeoutError:
                raise
            except (WebhookError, OSError):
                if connection.received:
                    raise
                # Closed by the server while idle, before it read this request: once more, on a new one.
        self.close()
        async with asyncio.timeout(self._connect_timeout_s):
            connection = await self._connect(target)
        self._connection, self._connected_to = connection, target
        async with asyncio.timeout(self._timeout_s):
            return await connection.exchange(request)

    async def _connect(self, target: _Target) -> _Connection:
        tls = None
        if target.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
        )
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._connected_to = None
