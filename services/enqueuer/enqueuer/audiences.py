"""Contact, list and segment use cases: streamed imports, list membership, segments, audience previews."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from enqueuer.domain import Refused
from enqueuer.importing import ContactRow, CsvReader, ImportFormatError, JsonReader, parse_row
from enqueuer.pricing import Pricer, TextShape
from enqueuer.store import contacts as store
from enqueuer.store import tenants as tenant_store
from shared.sms import placeholder_names

COPY_ROWS = 10_000
PREVIEW_GROUPS = 5_000


@dataclass
class ImportReport:
    received: int = 0
    imported: int = 0
    updated: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def body(self, max_errors: int) -> dict[str, Any]:
        return {
            "received": self.received,
            "imported": self.imported,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
            "errorsTruncated": self.rejected > max_errors,
        }


async def import_contacts(
    pool: asyncpg.Pool,
    tenant: tenant_store.Tenant,
    body: AsyncIterator[bytes],
    *,
    fmt: Literal["csv", "json"],
    default_consent: str,
    list_id: str | None,
    max_errors: int,
    at: datetime,
) -> ImportReport:
    """Read the body as it arrives, COPY good rows into a staging table in chunks, then merge set-based.
    Bad rows are reported (row number, reason); a file that cannot be read at all changes nothing.
    A chunk's COPY runs while the next rows are parsed: PostgreSQL and this process work at once."""
    reader: CsvReader | JsonReader = CsvReader() if fmt == "csv" else JsonReader()
    report = ImportReport()
    pending: list[store.ImportRow] = []
    copying: asyncio.Future[None] | None = None
    async with pool.acquire() as conn, conn.transaction():
        if list_id is not None and await store.load_list(conn, tenant.id, list_id) is None:
            raise Refused(404, "LIST_NOT_FOUND", "No such list.")
        await store.create_import_staging(conn)
        try:
            async for chunk in body:
                _take(reader.feed(chunk), tenant.default_region, report, pending, max_errors)
                if len(pending) >= COPY_ROWS:
                    if copying is not None:
                        await copying
                    copying = asyncio.ensure_future(store.copy_import_rows(conn, pending))
                    pending = []
            _take(reader.finish(), tenant.default_region, report, pending, max_errors)
        except ImportFormatError as exc:
            raise Refused(400, "INVALID_FILE", str(exc)) from None
        finally:
            if copying is not None:  # the connection is free (and any COPY error raised) before going on
                await copying
        if report.received == 0:
            raise Refused(400, "EMPTY_IMPORT", "The file holds no rows.")
        await store.copy_import_rows(conn, pending)
        counts = await store.merge_import(conn, tenant.id, default_consent, list_id, at)
    report.imported, report.updated, report.duplicates = (
        counts["inserted"],
        counts["updated"],
        counts["duplicates"],
    )
    return report


def _take(
    rows: Iterator[dict[str, Any]],
    region: str,
    report: ImportReport,
    pending: list[store.ImportRow],
    max_errors: int,
) -> None:
    for fields in rows:
        report.received += 1
        try:
            row = parse_row(fields, region)
        except ValueError as exc:
            report.rejected += 1
            if len(report.errors) < max_errors:
                phone = next(
                    (v for k, v in fields.items() if isinstance(k, str) and "phone" in k.lower()), None
                )
                report.errors.append({"row": report.received, "phone": phone, "reason": str(exc)})
            continue
        pending.append(_staged(report.received, row))


def _staged(row_no: int, r: ContactRow) -> store.ImportRow:
    return (
        row_no,
        r.phone,
        r.first_name,
        r.last_name,
        r.email,
        orjson.dumps(r.attributes).decode(),
        list(r.tags),
        r.consent,
    )


# --- lists and segments ------------------------------------------------------------------------------


async def create_list(pool: asyncpg.Pool, tenant_id: str, name: str, at: datetime) -> dict[str, Any]:
    list_id = str(uuid.uuid4())
    async with pool.acquire() as conn:
        if not await store.insert_list(conn, list_id, tenant_id, name, at):
            raise Refused(409, "NAME_TAKEN", f"A list named {name!r} already exists.")
        found = await store.load_list(conn, tenant_id, list_id)
    assert found is not None
    return found


async def create_segment(
    pool: asyncpg.Pool, tenant_id: str, name: str, spec: dict[str, Any], at: datetime
) -> dict[str, Any]:
    segment_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        for list_id in spec.get("list_ids", []):
            if await store.load_list(conn, tenant_id, list_id) is None:
                raise Refused(404, "LIST_NOT_FOUND", f"No list {list_id}.")
        if not await store.insert_segment(conn, segment_id, tenant_id, name, spec, at):
            raise Refused(409, "NAME_TAKEN", f"A segment named {name!r} already exists.")
        found = await store.load_segment(conn, tenant_id, segment_id)
    assert found is not None
    return found


# --- previews ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewText:
    text: str
    marketing: bool
    has_offer: bool
    links_base_url: str


async def preview(
    pool: asyncpg.Pool,
    tenant_id: str,
    audience: dict[str, Any] | None,
    text: PreviewText,
    *,
    campaign_id: str | None = None,
    sample: int = 5,
) -> dict[str, Any]:
    """How many contacts an audience reaches now and what sending `text` to them costs, in credits (SMS
    parts of each final text, priced once per distinct set of personalisation values)."""
    pricer = Pricer(TextShape(text.text, text.marketing, text.has_offer, text.links_base_url))
    async with pool.acquire() as conn:
        if audience is None:
            assert campaign_id is not None
            count, phones, groups, complete = await store.preview_inline(
                conn, campaign_id, tenant_id, sample, PREVIEW_GROUPS
            )
        else:
            spec = audience
            if audience["kind"] == "segment":
                segment = await store.load_segment(conn, tenant_id, audience["segment_id"])
                if segment is None:
                    raise Refused(404, "SEGMENT_NOT_FOUND", "No such segment.")
                spec = {"kind": "filter", "filter": segment["filter"]}
            elif (
                audience["kind"] == "list"
                and await store.load_list(conn, tenant_id, audience["list_id"]) is None
            ):
                raise Refused(404, "LIST_NOT_FOUND", "No such list.")
            count, phones, groups, complete = await store.preview_audience(
                conn,
                tenant_id,
                spec,
                marketing=text.marketing,
                placeholders=sorted(placeholder_names(text.text)),
                sample=sample,
                group_limit=PREVIEW_GROUPS,
            )
        credits = await tenant_store.load_credits(conn, tenant_id)
    priced = [(pricer.parts_for_json(v), n) for v, n in groups]
    known = sum(p * n for p, n in priced)
    counted = sum(n for _, n in priced)
    worst = max((p for p, _ in priced), default=pricer.fixed or 1)
    estimate = known + (count - counted) * worst  # beyond the distinct values priced, assume the longest text
    example = pricer.segments({})
    return {
        "count": count,
        "sample": phones,
        "cost": {
            "credits": estimate,
            "exact": complete,
            "partsPerMessage": {
                "min": min((p for p, _ in priced), default=0),
                "max": max((p for p, _ in priced), default=0),
            },
            "encoding": example.encoding,
        },
        "credits": {"available": credits.available, "reserved": credits.reserved},
        "enough": estimate <= credits.available,
    }
