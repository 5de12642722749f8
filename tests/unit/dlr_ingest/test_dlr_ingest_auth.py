"""Webhook authentication: shared secrets with rotation, HMAC with timestamp window, replays, source networks."""

from __future__ import annotations

import ipaddress

import pytest
from dlr_ingest.auth import (
    AuthPolicy,
    Refused,
    ReplayCache,
    check_secret,
    check_signature,
    check_source,
    sign,
    source_address,
)

BODY = b'[{"messageId":"m1","deliveryStatus":"Delivered"}]'
NOW = 1_800_000_000.0


def policy(**overrides: object) -> AuthPolicy:
    options: dict[str, object] = {
        "secret_header": "X-Webhook-Secret",
        "secrets": ["old-secret", "new-secret"],
        "signature_header": "X-Signature",
        "timestamp_header": "X-Timestamp",
        "hmac_secrets": ["old-key", "new-key"],
        "tolerance_s": 300,
        "allowed_cidrs": [],
        "trusted_proxy_cidrs": [],
    }
    options.update(overrides)
    return AuthPolicy.build(**options)  # type: ignore[arg-type]


def refusal(call: object) -> str:
    assert callable(call)
    with pytest.raises(Refused) as refused:
        call()
    return refused.value.code


@pytest.mark.parametrize("secret", ["old-secret", "new-secret"])
def test_both_secrets_of_a_rotation_are_accepted(secret: str) -> None:
    check_secret(policy(), secret)


@pytest.mark.parametrize(
    "given", [None, "", "old-secre", "new-secret ", "NEW-SECRET", "old-secretnew-secret"]
)
def test_a_missing_or_wrong_secret_is_refused(given: str | None) -> None:
    assert refusal(lambda: check_secret(policy(), given)) == "UNAUTHORIZED"


def test_no_configured_secret_means_no_secret_check() -> None:
    check_secret(policy(secrets=[]), None)


@pytest.mark.parametrize("key", [b"old-key", b"new-key"])
def test_a_signature_by_either_key_of_a_rotation_is_accepted(key: bytes) -> None:
    stamp = str(int(NOW))
    assert check_signature(policy(), BODY, sign(key, stamp, BODY), stamp, NOW) == sign(key, stamp, BODY)


def test_a_signature_may_carry_a_sha256_prefix_and_any_case() -> None:
    stamp = str(int(NOW))
    signature = "sha256=" + sign(b"new-key", stamp, BODY).upper()
    check_signature(policy(), BODY, signature, stamp, NOW)


def test_a_forged_signature_is_refused() -> None:
    stamp = str(int(NOW))
    forged = sign(b"guessed-key", stamp, BODY)
    assert refusal(lambda: check_signature(policy(), BODY, forged, stamp, NOW)) == "BAD_SIGNATURE"


def test_a_signature_of_another_body_is_refused() -> None:
    stamp = str(int(NOW))
    signature = sign(b"new-key", stamp, BODY)
    tampered = BODY.replace(b"Delivered", b"Failure")
    assert refusal(lambda: check_signature(policy(), tampered, signature, stamp, NOW)) == "BAD_SIGNATURE"


def test_the_timestamp_is_part_of_what_is_signed() -> None:
    signature = sign(b"new-key", str(int(NOW)), BODY)
    later = str(int(NOW) + 1)
    assert refusal(lambda: check_signature(policy(), BODY, signature, later, NOW)) == "BAD_SIGNATURE"


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_a_timestamp_outside_the_window_is_refused_even_when_signed(skew: int) -> None:
    stamp = str(int(NOW) + skew)
    signature = sign(b"new-key", stamp, BODY)
    assert refusal(lambda: check_signature(policy(), BODY, signature, stamp, NOW)) == "STALE_TIMESTAMP"


@pytest.mark.parametrize(
    ("signature", "stamp", "code"),
    [(None, "1", "SIGNATURE_REQUIRED"), ("ab", None, "SIGNATURE_REQUIRED"), ("ab", "soon", "BAD_TIMESTAMP")],
)
def test_missing_or_malformed_signature_headers_are_refused(
    signature: str | None, stamp: str | None, code: str
) -> None:
    assert refusal(lambda: check_signature(policy(), BODY, signature, stamp, NOW)) == code


def test_a_signature_is_accepted_once_within_its_window() -> None:
    cache = ReplayCache()
    assert cache.reserve("sig", NOW, 600)
    assert not cache.reserve("sig", NOW + 599, 600)
    assert cache.reserve("sig", NOW + 600, 600)  # expired: its timestamp is refused by then anyway


def test_a_released_signature_can_be_used_again_and_expired_entries_are_forgotten() -> None:
    cache = ReplayCache()
    assert cache.reserve("a", NOW, 10)
    cache.release("a")
    assert cache.reserve("a", NOW + 1, 10)
    assert cache.reserve("b", NOW + 2, 10)
    assert len(cache) == 2
    cache.reserve("c", NOW + 100, 10)
    assert len(cache) == 1


def test_sources_outside_the_allow_list_are_refused() -> None:
    p = policy(allowed_cidrs=["10.0.0.0/8", "2001:db8::/32"])
    check_source(p, ipaddress.ip_address("10.1.2.3"))
    check_source(p, ipaddress.ip_address("2001:db8::1"))
    assert refusal(lambda: check_source(p, ipaddress.ip_address("192.168.1.1"))) == "SOURCE_NOT_ALLOWED"
    assert refusal(lambda: check_source(p, None)) == "SOURCE_NOT_ALLOWED"


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    untrusting = policy()
    assert source_address(untrusting, "203.0.113.9", "10.0.0.1") == ipaddress.ip_address("203.0.113.9")
    trusting = policy(trusted_proxy_cidrs=["192.168.0.0/16"])
    assert source_address(trusting, "203.0.113.9", "10.0.0.1") == ipaddress.ip_address("203.0.113.9")
    assert source_address(trusting, "192.168.0.5", "10.0.0.1") == ipaddress.ip_address("10.0.0.1")


def test_behind_proxies_the_right_most_untrusted_hop_is_the_source() -> None:
    p = policy(trusted_proxy_cidrs=["192.168.0.0/16"])
    # The client wrote the first entry itself; the proxies appended the rest.
    forwarded = "10.9.9.9, 198.51.100.7, 192.168.3.3"
    assert source_address(p, "192.168.0.5", forwarded) == ipaddress.ip_address("198.51.100.7")
    assert source_address(p, "192.168.0.5", "not-an-ip") is None


def test_a_malformed_cidr_stops_the_configuration() -> None:
    with pytest.raises(ValueError, match="does not appear"):
        policy(allowed_cidrs=["10.0.0.0/33"])
