"""Mitto "API B" adapter: one long-lived httpx.AsyncClient; every call ends as one outcome type.

How each failure maps (the rule behind "never send twice"):
- `httpx.ConnectError`, `httpx.ConnectTimeout`, `httpx.PoolTimeout`: the request never left → NotSent(retry=True)
- HTTP 429: refused before processing → NotSent(retry=True, retry_after from the header)
- other HTTP 4xx: refused → NotSent(retry=False) with the provider's error
- HTTP 5xx, `httpx.ReadTimeout`, `httpx.WriteTimeout`, `httpx.RemoteProtocolError`, any other transport
  error after the request started: the provider may have accepted it → Ambiguous (never resent here)
- HTTP 200 with a body we cannot read: Ambiguous as well (it may have been accepted)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class ItemResult:
    message_id: str | None
    error: str | None


@dataclass(frozen=True)
class Accepted:
    bulk_id: str | None
    items: tuple[ItemResult, ...]


@dataclass(frozen=True)
class NotSent:
    retry: bool
    error: str
    status: int | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Ambiguous:
    reason: str


SendOutcome = Accepted | NotSent | Ambiguous


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"X-Mitto-API-Key": api_key, "Content-Type": "application/json"},
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send_bulk(self, messages: list[dict[str, Any]]) -> SendOutcome:
        """Results come back by array position; an item without `messageId` is a failure for it."""
        outcome = await self._post(self.BULK_PATH, orjson.dumps({"messages": messages}))
        if not isinstance(outcome, httpx.Response):
            return outcome
        try:
            body = orjson.loads(outcome.content)
            items = body["messages"]
            if len(items) != len(messages):
                return Ambiguous(f"provider answered {len(items)} results for {len(messages)} messages")
            results = tuple(
                ItemResult(
                    i.get("messageId") or None,
                    None if i.get("messageId") else str(i.get("error") or "no messageId in provider result"),
                )
                for i in items
            )
            return Accepted(body.get("bulkId"), results)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return Ambiguous(f"unreadable provider answer: {exc}")

    async def send_one(self, message: dict[str, Any]) -> SendOutcome:
        outcome = await self._post(self.SINGLE_PATH, orjson.dumps(message))
        if not isinstance(outcome, httpx.Response):
            return outcome
        try:
            item = orjson.loads(outcome.content)["messages"][0]
            return Accepted(
                None, (ItemResult(item.get("messageId"), None if item.get("messageId") else "no messageId"),)
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            return Ambiguous(f"unreadable provider answer: {exc}")

    async def message_status(self, message_id: str) -> dict[str, Any] | None:
        """The provider's record of one message; None when it does not know the id."""
        response = await self.client.get(self.STATUS_PATH.format(message_id=message_id))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = orjson.loads(response.content)
        return result

    async def _post(self, path: str, content: bytes) -> httpx.Response | NotSent | Ambiguous:
        try:
            response = await self.client.post(path, content=content)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return NotSent(retry=True, error=f"provider unreachable: {type(exc).__name__}")
        except httpx.TransportError as exc:
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
                retry=False, error=f"provider refused ({status}): {response.text[:500]}", status=status
            )
        if status >= 500:
            return Ambiguous(f"provider error {status} after the request was sent")
        return response


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
