"""Per-recipient link tokens: unguessable, verifiable without a database, and of a fixed length (so the
enqueuer can price a message before the token exists).

token = base64url(kind byte + recipient id (8 bytes) + HMAC-SHA256(secret, kind + id)[:12]) -> 28 characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LinkKind = Literal["offer", "unsubscribe"]
_KIND_BYTE: dict[str, bytes] = {"offer": b"o", "unsubscribe": b"u"}
_BYTE_KIND: dict[bytes, LinkKind] = {b"o": "offer", b"u": "unsubscribe"}
_MAC_BYTES = 12
TOKEN_LENGTH = 28


class LinkSettings(BaseSettings):
    """Where recipients' links point (dlr-ingest's public URL) and the key that signs their tokens."""

    model_config = SettingsConfigDict(env_prefix="LINKS_", extra="ignore")

    base_url: str = "http://127.0.0.1:8003"
    secret: str = Field(default="local-links-secret", min_length=8)


def make_token(secret: str, kind: LinkKind, recipient_id: int) -> str:
    body = _KIND_BYTE[kind] + recipient_id.to_bytes(8, "big")
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def read_token(secret: str, token: str) -> tuple[LinkKind, int] | None:
    """(kind, recipient id) when the token is genuine; None otherwise (compared in constant time)."""
    if len(token) != TOKEN_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    body, mac = raw[:9], raw[9:]
    kind = _BYTE_KIND.get(body[:1])
    if kind is None or len(mac) != _MAC_BYTES:
        return None
    expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    return kind, int.from_bytes(body[1:9], "big")


def link_url(base_url: str, kind: LinkKind, token: str) -> str:
    return f"{base_url.rstrip('/')}/{'l' if kind == 'offer' else 'u'}/{token}"
