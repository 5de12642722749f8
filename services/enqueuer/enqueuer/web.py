"""What every route module of the enqueuer shares: authentication, the clock, id checks, the plan settings."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from fastapi import Request

from enqueuer import domain
from enqueuer.messages import hash_key
from enqueuer.planning import PlanSettings
from enqueuer.settings import EnqueuerSettings
from enqueuer.store import tenants as tenant_store
from shared.web import ApiError


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Deps:
    settings: EnqueuerSettings
    pool_ref: Callable[[], asyncpg.Pool]
    clock: Callable[[], datetime] = now

    @property
    def pool(self) -> asyncpg.Pool:
        return self.pool_ref()

    @property
    def plan(self) -> PlanSettings:
        s = self.settings
        return PlanSettings(s.batch_size, s.max_batch_bytes, s.links.base_url, s.reservation_ttl)

    async def tenant(self, request: Request) -> tenant_store.Tenant:
        key = api_key(request)
        async with self.pool.acquire() as conn:
            found = await tenant_store.tenant_for_key(conn, hash_key(key))
        if found is None:
            raise ApiError(401, "UNAUTHORIZED", "Unknown or revoked API key.")
        return found

    def operator(self, request: Request) -> None:
        key = self.settings.operator_api_key
        if not key or api_key(request) != key:
            raise ApiError(401, "UNAUTHORIZED", "An operator API key is required.")


def api_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not key:
        raise ApiError(
            401, "UNAUTHORIZED", "Send an API key as 'Authorization: Bearer <key>' or 'X-Api-Key'."
        )
    return key


def check_uuid(value: str, what: str = "campaign") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, "INVALID_ID", f"The {what} id is not valid.") from None


def check_sender(sender_id: str | None) -> None:
    if sender_id is None:
        return
    try:
        domain.check_sender_id(sender_id)
    except ValueError as exc:
        raise ApiError(400, "INVALID_SENDER_ID", str(exc)) from None


def refused(exc: domain.Refused) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, **exc.extra)
