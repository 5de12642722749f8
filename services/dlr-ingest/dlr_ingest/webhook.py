"""`POST /webhooks/mitto/dlr`: authenticate, bound, parse, publish, then answer.

202 only once the broker acknowledged every report of the body (acks=all); 503 with Retry-After when it did
not, so the provider retries and nothing is lost (a retry may duplicate what did reach the log, which is
harmless downstream). Every refusal is a 4xx with a stable code and publishes nothing. Never touches
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from datetime import UTC, datetime
from operator import itemgetter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import Response

from dlr_ingest import auth
from dlr_ingest.domain import BadReport, parse_reports
from dlr_ingest.encoding import encode_reports
from dlr_ingest.publisher import BatchPublisher, PublishRefused
from dlr_ingest.settings import DlrIngestSettings
from shared.topics import DELIVERY_REPORTS
from shared.web import ApiError

log = logging.getLogger(__name__)

_ACCEPTED_HEADERS = {"content-type": "application/json"}
_STATUS = itemgetter(2)  # Report.status, read in C


class Webhook:
    def __init__(
        self,
        settings: DlrIngestSettings,
        publisher: BatchPublisher,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.policy = auth.AuthPolicy.build(
            secret_header=settings.webhook_secret_header,
            secrets=settings.webhook_secrets,
            signature_header=settings.webhook_signature_header,
            timestamp_header=settings.webhook_timestamp_header,
            hmac_secrets=settings.webhook_hmac_secrets,
            tolerance_s=settings.webhook_tolerance_s,
            allowed_cidrs=settings.webhook_allowed_cidrs,
            trusted_proxy_cidrs=settings.webhook_trusted_proxy_cidrs,
        )
        self.replays = auth.ReplayCache()
        self.received = Counter(
            "dlr_reports_received_total",
            "Reports accepted and published, by mapped status (unknown = a raw status outside the mapping)",
            ["status"],
            registry=registry,
        )
        self._received_by: dict[str, Counter] = {}  # label children, looked up once per status
        self.requests = Counter("dlr_requests_accepted_total", "Requests answered 202", registry=registry)
        self.rejected = Counter(
            "dlr_requests_rejected_total", "Requests refused, by reason", ["reason"], registry=registry
        )
        self.publish_seconds = Histogram(
            "dlr_publish_seconds",
            "Time for the broker to acknowledge a request's reports",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        Gauge(
            "dlr_publish_backlog_bytes",
            "Report bytes waiting for the broker's acknowledgement (requests refused past the limit)",
            registry=registry,
        ).set_function(lambda: publisher.backlog_bytes)

    def refuse(self, status: int, code: str, message: str, **extra: object) -> ApiError:
        self.rejected.labels(code).inc()
        return ApiError(status, code, message, **extra)

    async def handle(self, request: Request) -> Response:
        s = self.settings
        policy = self.policy
        try:
            if policy.allowed:
                peer = request.client.host if request.client else None
                address = auth.source_address(policy, peer, request.headers.get("x-forwarded-for"))
                auth.check_source(policy, address)
            auth.check_secret(policy, request.headers.get(policy.secret_header))
        except auth.Refused as exc:
            raise self.refuse(401, exc.code, exc.message) from None
        body = await self._body(request)
        signature = self._verify_signature(request, body) if policy.signs else None
        try:
            reports = parse_reports(body, max_reports=s.max_reports_per_request)
        except BadReport as exc:
            raise self.refuse(400, exc.code, exc.message) from None
        # Remembered past the last moment its timestamp is still accepted; released if publishing fails,
        # so that the provider's retry of the same signed request is not taken for a replay.
        if signature is not None and not self.replays.reserve(signature, time.time(), 2 * policy.tolerance_s):
            raise self.refuse(401, "REPLAYED_SIGNATURE", "This signed request was already received.")
        records = encode_reports(reports, received_at=datetime.now(UTC), source="webhook")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.publisher.publish(DELIVERY_REPORTS, records, timeout_s=s.publish_timeout_s)
        except asyncio.CancelledError:
            if signature is not None:
                self.replays.release(signature)
            raise
        except Exception as exc:
            if signature is not None:
                self.replays.release(signature)
            if not isinstance(exc, PublishRefused):
                log.warning("could not publish %d delivery reports: %r", len(reports), exc)
            raise self.refuse(
                503,
                "BROKER_UNAVAILABLE",
                "The reports could not be recorded; retry later.",
                retry_after=s.retry_after_s,
            ) from None
        self.publish_seconds.observe(loop.time() - started)
        self.requests.inc()
        tally = ((reports[0].status, 1),) if len(reports) == 1 else Tally(map(_STATUS, reports)).items()
        received = self._received_by
        for status, n in tally:
            child = received.get(status) or received.setdefault(status, self.received.labels(status))
            child.inc(n)
        return Response(b'{"accepted":%d}' % len(reports), status_code=202, headers=_ACCEPTED_HEADERS)

    def _verify_signature(self, request: Request, body: bytes) -> str:
        policy = self.policy
        try:
            return auth.check_signature(
                policy,
                body,
                request.headers.get(policy.signature_header),
                request.headers.get(policy.timestamp_header),
                time.time(),
            )
        except auth.Refused as exc:
            raise self.refuse(401, exc.code, exc.message) from None

    async def _body(self, request: Request) -> bytes:
        """The raw body, refused with 413 as soon as it is known to exceed the limit (before reading it
        when Content-Length says so, else while streaming)."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise self.refuse(413, "PAYLOAD_TOO_LARGE", f"The body exceeds {limit} bytes.")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise self.refuse(413, "PAYLOAD_TOO_LARGE", f"The body exceeds {limit} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)
