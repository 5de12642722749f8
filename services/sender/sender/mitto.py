"""Mitto "API B" adapter: one long-lived httpx.AsyncClient; every call ends as one outcome type, never raises.

How a send maps (the rule behind "never send twice"):
- `httpx.ConnectError` (refused, DNS, TLS handshake), `httpx.ConnectTimeout`, `httpx.PoolTimeout`: the
  request never left this process → NotSent(retry=True)
- `httpx.UnsupportedProtocol`, `httpx.LocalProtocolError`: the request could not be built → NotSent(retry=False)
- HTTP 429: refused before processing → NotSent(retry=True, retry_after from the header)
- any other HTTP 4xx: refused → NotSent(retry=False) with the provider's error
- HTTP 5xx, `httpx.ReadTimeout`, `httpx.WriteTimeout`, `httpx.RemoteProtocolError`, any other error once the
  request may have been written: the provider may have accepted it → Ambiguous (never resent here)
- HTTP 200 whose body cannot be read, or with a different number of results than items: Ambiguous as well
  (such an answer's message ids are kept, for status lookups)
Status lookups are reads: every failure is a LookupFailed that may simply be tried again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class Accepted:
    """The provider answered for every item, by array position: a message id, or the reason it has none."""

    bulk_id: str | None
    message_ids: tuple[str | None, ...]
    errors: tuple[str | None, ...]


@dataclass(frozen=True)
class NotSent:
    retry: bool
    error: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Ambiguous:
    reason: str
    message_ids: tuple[str, ...] = ()  # ids in an answer whose positions cannot be trusted


SendOutcome = Accepted | NotSent | Ambiguous


@dataclass(frozen=True)
class Found:
    message_id: str
    delivery_status: str
    parts: int
    reference: str | None


@dataclass(frozen=True)
class Unknown:
    """The provider does not know this message id (HTTP 404)."""


@dataclass(frozen=True)
class LookupFailed:
    reason: str
    retry_after: float | None = None


LookupOutcome = Found | Unknown | LookupFailed

NOT_LEFT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
NOT_BUILT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


class MittoClient:
    BULK_PATH = "/api/v1.1/Messages/sendmessagesbulk"
    SINGLE_PATH = "/api/v1.1/Messages/send"
    STATUS_PATH = "/api/v1.1/Messages/{message_id}"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_connections: int = 32,
        keepalive_expiry: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`keepalive_expiry` stays below the provider's idle timeout, so a request is not written to a
        connection the server is closing (that would end as an ambiguous RemoteProtocolError)."""
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"X-Mitto-API-Key": api_key, "Content-Type": "application/json"},
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=keepalive_expiry,
            ),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, messages: list[dict[str, Any]]) -> SendOutcome:
        """One message goes through the single-send endpoint, several through one bulk call."""
        if len(messages) == 1:
            return await self.send_one(messages[0])
        return await self.send_bulk(messages)

    async def send_bulk(self, messages: list[dict[str, Any]]) -> SendOutcome:
        """Results come back by array position; an item without `messageId` is a failure for it."""
        answer = await self._post(self.BULK_PATH, orjson.dumps({"messages": messages}))
        if not isinstance(answer, httpx.Response):
            return answer
        try:
            body = orjson.loads(answer.content)
            items = body["messages"]
            ids = tuple(_message_id(i) for i in items)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return Ambiguous(f"unreadable provider answer: {type(exc).__name__}")
        if len(items) != len(messages):
            return Ambiguous(
                f"provider answered {len(items)} results for {len(messages)} messages",
                tuple(i for i in ids if i is not None),
            )
        bulk_id = body.get("bulkId")
        errors = tuple(None if mid else _item_error(item) for mid, item in zip(ids, items, strict=True))
        return Accepted(bulk_id if isinstance(bulk_id, str) else None, ids, errors)

    async def send_one(self, message: dict[str, Any]) -> SendOutcome:
        """The single-send endpoint takes the item unwrapped; a refused item is a 4xx (NotSent)."""
        answer = await self._post(self.SINGLE_PATH, orjson.dumps(message))
        if not isinstance(answer, httpx.Response):
            return answer
        try:
            item = orjson.loads(answer.content)["messages"][0]
            mid = _message_id(item)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Ambiguous(f"unreadable provider answer: {type(exc).__name__}")
        return Accepted(None, (mid,), (None if mid else _item_error(item),))

    async def message_status(self, message_id: str) -> LookupOutcome:
        """The provider's record of one message (`reference` ties it back to a recipient)."""
        try:
            response = await self.client.get(self.STATUS_PATH.format(message_id=message_id))
        except httpx.HTTPError as exc:
            return LookupFailed(f"{type(exc).__name__} during status lookup")
        if response.status_code == 404:
            return Unknown()
        if response.status_code != 200:
            return LookupFailed(
                f"status lookup answered {response.status_code}",
                _seconds(response.headers.get("retry-after")),
            )
        try:
            body = orjson.loads(response.content)
            reference = body.get("reference")
            return Found(
                str(body.get("messageId") or message_id),
                str(body.get("deliveryStatus") or ""),
                int(body.get("messageParts") or 1),
                reference if isinstance(reference, str) else None,
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            return LookupFailed(f"unreadable status answer: {type(exc).__name__}")

    async def _post(self, path: str, content: bytes) -> httpx.Response | NotSent | Ambiguous:
        try:
            response = await self.client.post(path, content=content)
        except NOT_LEFT as exc:
            return NotSent(retry=True, error=f"provider unreachable: {type(exc).__name__}")
        except NOT_BUILT as exc:
            return NotSent(retry=False, error=f"request could not be made: {type(exc).__name__}: {exc}")
        except Exception as exc:  # the request may have been written: only "ambiguous" is safe
            return Ambiguous(f"{type(exc).__name__} after the request was sent")
        status = response.status_code
        if status == 429:
            return NotSent(
                retry=True,
                error="provider rate limit (429)",
                status=429,
                retry_after=_seconds(response.headers.get("retry-after")),
            )
        if 400 <= status < 500:
            return NotSent(
                retry=False, error=f"provider refused ({status}): {_provider_error(response)}", status=status
            )
        if status >= 500:
            return Ambiguous(f"provider error {status} after the request was sent")
        if not 200 <= status < 300:
            return Ambiguous(f"unexpected provider status {status}")
        return response


def _message_id(item: Any) -> str | None:
    mid = item.get("messageId")
    return mid if isinstance(mid, str) and mid else None


def _item_error(item: Any) -> str:
    for key in ("error", "errorMessage", "description", "status"):
        value = item.get(key)
        if value:
            return str(value)[:300]
    return "no messageId in provider result"


def _provider_error(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("error", "message", "title", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return response.text[:300]


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by Mitto as far as is known: ignored)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
