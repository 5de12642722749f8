"""Who may post delivery reports: source network, shared secret, HMAC signature with a timestamp, replays.

Mitto does not sign callbacks; it sends custom headers configured on the webhook, so the shared secret is the
usual check. The HMAC is for a signing proxy in front of us. Every comparison runs in constant time and tries
every configured secret (two are valid at once during a rotation). Pure: the clock is passed in.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """Not authenticated; `code` is the stable error code (and the metrics reason)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AuthPolicy:
    secret_header: str
    secrets: tuple[bytes, ...]
    signature_header: str
    timestamp_header: str
    hmac_secrets: tuple[bytes, ...]
    tolerance_s: int
    allowed: tuple[Network, ...]
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def build(
        cls,
        *,
        secret_header: str,
        secrets: Sequence[str],
        signature_header: str,
        timestamp_header: str,
        hmac_secrets: Sequence[str],
        tolerance_s: int,
        allowed_cidrs: Sequence[str],
        trusted_proxy_cidrs: Sequence[str],
    ) -> AuthPolicy:
        """Raises ValueError for a malformed CIDR, so that a bad setting stops the process at start."""
        return cls(
            secret_header=secret_header,
            secrets=tuple(s.encode() for s in secrets if s),
            signature_header=signature_header,
            timestamp_header=timestamp_header,
            hmac_secrets=tuple(s.encode() for s in hmac_secrets if s),
            tolerance_s=tolerance_s,
            allowed=tuple(ipaddress.ip_network(c, strict=False) for c in allowed_cidrs),
            trusted_proxies=tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxy_cidrs),
        )

    @property
    def signs(self) -> bool:
        return bool(self.hmac_secrets)


def _within(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in n for n in networks)


def source_address(policy: AuthPolicy, peer: str | None, forwarded_for: str | None) -> Address | None:
    """The caller's address: the TCP peer, or, when the peer is a trusted proxy, the right-most address of
    X-Forwarded-For that is not itself a trusted proxy (entries left of it are the client's to forge)."""
    try:
        address: Address | None = ipaddress.ip_address(peer) if peer else None
    except ValueError:
        return None
    if address is None or not forwarded_for or not _within(address, policy.trusted_proxies):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return None
        if not _within(address, policy.trusted_proxies):
            return address
    return address


def check_source(policy: AuthPolicy, address: Address | None) -> None:
    if policy.allowed and (address is None or not _within(address, policy.allowed)):
        raise Refused("SOURCE_NOT_ALLOWED", "This source address may not post delivery reports.")


def check_secret(policy: AuthPolicy, given: str | None) -> None:
    if not policy.secrets:
        return
    raw = (given or "").encode()
    # Every secret is compared, each in constant time, so timing tells nothing about which one matched.
    matches = [hmac.compare_digest(raw, s) for s in policy.secrets]
    if not any(matches):
        raise Refused("UNAUTHORIZED", "Missing or wrong webhook secret.")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 over `{timestamp}.{body}`: what a signing caller sends in the signature header."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def check_signature(
    policy: AuthPolicy, body: bytes, signature: str | None, timestamp: str | None, now: float
) -> str:
    """Verify the signature and its timestamp; returns the normalised signature (the replay-cache key)."""
    if not signature or not timestamp:
        raise Refused(
            "SIGNATURE_REQUIRED",
            f"Headers {policy.signature_header} and {policy.timestamp_header} are required.",
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Refused("BAD_TIMESTAMP", f"{policy.timestamp_header} must be unix seconds.") from None
    if abs(now - sent_at) > policy.tolerance_s:
        raise Refused(
            "STALE_TIMESTAMP", f"{policy.timestamp_header} is more than {policy.tolerance_s}s away from now."
        )
    given = signature.strip().lower().removeprefix("sha256=")
    matches = [hmac.compare_digest(given, sign(s, timestamp, body)) for s in policy.hmac_secrets]
    if not any(matches):
        raise Refused("BAD_SIGNATURE", "The signature does not match the body.")
    return given


class ReplayCache:
    """Signatures seen within the tolerance window, kept in this process's memory with their expiry.

    A signed request is accepted once: a second one with the same signature inside the window is a replay
    (outside the window its timestamp is refused anyway). Several processes behind one port each have their
    own cache, so a replay that lands on another process gets through, and is a harmless duplicate there."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def reserve(self, signature: str, now: float, ttl_s: float) -> bool:
        """True and remembered until `now + ttl_s` if unseen; False for a replay."""
        self._purge(now)
        if signature in self._expiry:
            return False
        self._expiry[signature] = now + ttl_s
        heapq.heappush(self._heap, (now + ttl_s, signature))
        return True

    def release(self, signature: str) -> None:
        """Forget a reservation whose request failed, so that the provider's retry is not a replay."""
        self._expiry.pop(signature, None)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expiry, signature = heapq.heappop(self._heap)
            if self._expiry.get(signature) == expiry:
                del self._expiry[signature]
