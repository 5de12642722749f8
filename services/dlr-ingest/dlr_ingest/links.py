"""The recipients' links: `/l/{token}` redirects to the campaign's offer and records the click,
`/u/{token}` unsubscribes and says so. A forged or unknown token gets a 404 page and changes nothing.

The events go through the outbox in the same transaction as what the page read or wrote, so a page never
depends on the broker being up, and an unsubscribe is never shown without its event being on its way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter
from starlette.responses import HTMLResponse, RedirectResponse, Response

from dlr_ingest import pages, store
from dlr_ingest.domain import LinkTarget, redirect_target
from shared import db
from shared.broker import TRANSIENT_ERRORS
from shared.events import ContactUnsubscribed, Event, LinkClicked, envelope_for
from shared.links import LinkKind, read_token
from shared.topics import ENGAGEMENT_EVENTS

log = logging.getLogger(__name__)

# The token is in the path: keep it out of the offer site's Referer header, out of caches and indexes.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


class LinkPages:
    def __init__(
        self, pool_ref: Callable[[], asyncpg.Pool], links_secret: str, registry: CollectorRegistry
    ) -> None:
        self.pool_ref = pool_ref
        self.secret = links_secret
        self.visits = Counter(
            "dlr_link_requests_total",
            "Link requests, by link kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )

    async def offer(self, token: str) -> Response:
        recipient = self._recipient(token, "offer")
        if recipient is None:
            return self._not_found("offer")
        at = datetime.now(UTC)
        try:
            async with self.pool_ref().acquire() as conn, conn.transaction():
                target = await store.load_link_target(conn, recipient)
                url = redirect_target(target.offer_url) if target else None
                if target is None or url is None:
                    return self._not_found("offer")
                clicked = LinkClicked(recipient_id=recipient, link="offer", clicked_at=at)
                await db.add_outbox(conn, [_engagement(target, clicked, at)])
        except TRANSIENT_ERRORS:
            return self._unavailable("offer")
        self.visits.labels("offer", "redirected").inc()
        return RedirectResponse(url, status_code=302, headers=_HEADERS)

    async def unsubscribe(self, token: str) -> Response:
        recipient = self._recipient(token, "unsubscribe")
        if recipient is None:
            return self._not_found("unsubscribe")
        at = datetime.now(UTC)
        try:
            async with self.pool_ref().acquire() as conn, conn.transaction():
                target = await store.load_link_target(conn, recipient)
                if target is None:
                    return self._not_found("unsubscribe")
                first = await store.add_unsubscribe(conn, recipient, at)
                if first:
                    event = ContactUnsubscribed(
                        recipient_id=recipient, phone=target.phone, unsubscribed_at=at
                    )
                    await db.add_outbox(conn, [_engagement(target, event, at)])
        except TRANSIENT_ERRORS:
            return self._unavailable("unsubscribe")
        self.visits.labels("unsubscribe", "unsubscribed" if first else "again").inc()
        return HTMLResponse(pages.unsubscribed(target.shop_name), headers=_HEADERS)

    def _recipient(self, token: str, kind: LinkKind) -> int | None:
        found = read_token(self.secret, token)
        return found[1] if found is not None and found[0] == kind else None

    def _not_found(self, kind: str) -> Response:
        self.visits.labels(kind, "not_found").inc()
        return HTMLResponse(pages.not_found(), status_code=404, headers=_HEADERS)

    def _unavailable(self, kind: str) -> Response:
        log.exception("link page could not reach the database")
        self.visits.labels(kind, "unavailable").inc()
        return HTMLResponse(pages.unavailable(), status_code=503, headers={**_HEADERS, "Retry-After": "30"})


def _engagement(target: LinkTarget, event: Event, at: datetime) -> db.OutboxMessage:
    """engagement.events are keyed by campaign id, like every other per-campaign topic: one campaign's clicks
    and unsubscribes stay in order on one partition, next to where its counters are kept."""
    return db.OutboxMessage(
        ENGAGEMENT_EVENTS,
        target.campaign_id,
        envelope_for(event, occurred_at=at, tenant_id=target.tenant_id, campaign_id=target.campaign_id),
    )
