"""SQL of contacts, imports (COPY into a staging table, then set-based merges), lists, segments, and the
audience query that turns a campaign's audience into eligible contacts."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shared.db import Conn

STAGING_COLUMNS = ("row_no", "phone", "first_name", "last_name", "email", "attributes", "tags", "consent")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_CONTACT_FIELDS = {"first_name": "c.first_name", "last_name": "c.last_name", "email": "c.email"}

ImportRow = tuple[int, str, str | None, str | None, str | None, str, list[str], str | None]


# --- imports -----------------------------------------------------------------------------------------


async def create_import_staging(conn: Conn) -> None:
    """A temporary table for one import; it disappears with the transaction."""
    await conn.execute(
        """CREATE TEMP TABLE contact_import (
               row_no int, phone text, first_name text, last_name text, email text, attributes text,
               tags text[], consent text) ON COMMIT DROP"""
    )


async def copy_import_rows(conn: Conn, rows: Sequence[ImportRow]) -> None:
    await conn.copy_records_to_table("contact_import", records=rows, columns=STAGING_COLUMNS)


async def merge_import(
    conn: Conn, tenant_id: str, default_consent: str, list_id: str | None, at: datetime
) -> dict[str, int]:
    """Merge the staged rows into the tenant's contacts: the last row of a phone wins, fields left empty
    keep what the contact had, attributes merge, tags add up, and an opt-out is never undone.
    Returns counts: staged, duplicates, inserted, updated."""
    staged = int(await conn.fetchval("SELECT count(*) FROM contact_import"))
    distinct = _count(
        await conn.execute(
            """CREATE TEMP TABLE contact_import_last ON COMMIT DROP AS
               SELECT DISTINCT ON (phone) * FROM contact_import ORDER BY phone, row_no DESC"""
        )
    )
    updated = await conn.execute(
        """UPDATE contacts c SET
               first_name = coalesce(d.first_name, c.first_name),
               last_name = coalesce(d.last_name, c.last_name),
               email = coalesce(d.email, c.email),
               attributes = c.attributes || d.attributes::jsonb,
               tags = CASE WHEN d.tags = '{}' THEN c.tags
                           ELSE ARRAY(SELECT DISTINCT t FROM unnest(c.tags || d.tags) AS t ORDER BY t) END,
               consent = coalesce(d.consent, c.consent),
               updated_at = $2
           FROM contact_import_last d
           WHERE c.tenant_id = $1 AND c.phone = d.phone""",
        tenant_id,
        at,
    )
    insert_new = """INSERT INTO contacts (tenant_id, phone, first_name, last_name, email, attributes, tags,
                                          consent, created_at, updated_at)
                    SELECT $1, d.phone, d.first_name, d.last_name, d.email, d.attributes::jsonb, d.tags,
                           coalesce(d.consent, $2), $3, $3
                    FROM contact_import_last d
                    WHERE NOT EXISTS (SELECT 1 FROM contacts c WHERE c.tenant_id = $1 AND c.phone = d.phone)"""
    try:
        # A plain insert costs a third less than a speculative one (ON CONFLICT). It fails only when another
        # transaction added one of these phones after this statement's snapshot (an opt-out, a concurrent
        # import of the tenant); then the statement runs again, skipping those phones.
        async with conn.transaction():
            inserted = await conn.execute(insert_new, tenant_id, default_consent, at)
    except asyncpg.UniqueViolationError:
        inserted = await conn.execute(
            insert_new + " ON CONFLICT (tenant_id, phone) DO NOTHING", tenant_id, default_consent, at
        )
    if list_id is not None:
        await conn.execute(
            """INSERT INTO list_members (list_id, contact_id, added_at)
               SELECT $2, c.id, $3 FROM contact_import_last d
               JOIN contacts c ON c.tenant_id = $1 AND c.phone = d.phone
               ON CONFLICT DO NOTHING""",
            tenant_id,
            list_id,
            at,
        )
    return {
        "staged": staged,
        "duplicates": staged - distinct,
        "inserted": _count(inserted),
        "updated": _count(updated),
    }


def _count(status: str) -> int:
    return int(status.split()[-1])


# --- contacts ----------------------------------------------------------------------------------------

_CONTACT = """id, phone, first_name, last_name, email, attributes, tags, consent, opted_out_at, created_at,
              updated_at"""


async def list_contacts(
    conn: Conn, tenant_id: str, *, limit: int, after_id: int, phone: str | None
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""SELECT {_CONTACT} FROM contacts WHERE tenant_id = $1 AND id > $2
                AND ($4::text IS NULL OR phone = $4) ORDER BY id LIMIT $3""",
        tenant_id,
        after_id,
        limit,
        phone,
    )
    return [dict(r) for r in rows]


async def count_contacts(conn: Conn, tenant_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = $1", tenant_id))


async def load_contact(conn: Conn, tenant_id: str, contact_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_CONTACT} FROM contacts WHERE tenant_id = $1 AND id = $2", tenant_id, contact_id
    )
    return dict(row) if row else None


async def update_contact(
    conn: Conn, tenant_id: str, contact_id: int, changes: dict[str, Any], at: datetime
) -> dict[str, Any] | None:
    """Apply a validated patch (keys: first_name, last_name, email, attributes, tags, consent, opted_out)."""
    row = await conn.fetchrow(
        f"""UPDATE contacts SET
                first_name = CASE WHEN $3 ? 'first_name' THEN $3->>'first_name' ELSE first_name END,
                last_name = CASE WHEN $3 ? 'last_name' THEN $3->>'last_name' ELSE last_name END,
                email = CASE WHEN $3 ? 'email' THEN $3->>'email' ELSE email END,
                attributes = CASE WHEN $3 ? 'attributes' THEN attributes || ($3->'attributes') ELSE attributes END,
                tags = CASE WHEN $3 ? 'tags' THEN ARRAY(SELECT jsonb_array_elements_text($3->'tags'))
                            ELSE tags END,
                consent = coalesce($3->>'consent', consent),
                opted_out_at = CASE WHEN NOT $3 ? 'opted_out' THEN opted_out_at
                                    WHEN ($3->>'opted_out')::boolean THEN coalesce(opted_out_at, $4)
                                    ELSE NULL END,
                updated_at = $4
            WHERE tenant_id = $1 AND id = $2 RETURNING {_CONTACT}""",
        tenant_id,
        contact_id,
        changes,
        at,
    )
    return dict(row) if row else None


async def opt_out_recipient(conn: Conn, recipient_id: int, at: datetime) -> bool:
    """Opt out the contact with the recipient's tenant and phone (created when the phone was only an inline
    recipient, so that no later campaign of the tenant reaches it). False when the recipient is unknown."""
    done = await conn.fetchval(
        """INSERT INTO contacts AS c (tenant_id, phone, opted_out_at, created_at, updated_at)
           SELECT cp.tenant_id, r.phone, $2, $2, $2
           FROM recipients r JOIN campaigns cp ON cp.id = r.campaign_id WHERE r.id = $1
           ON CONFLICT (tenant_id, phone) DO UPDATE
               SET opted_out_at = coalesce(c.opted_out_at, EXCLUDED.opted_out_at), updated_at = EXCLUDED.updated_at
           RETURNING true""",
        recipient_id,
        at,
    )
    return bool(done)


async def opt_out_phone(conn: Conn, tenant_id: str, phone: str, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO contacts AS c (tenant_id, phone, opted_out_at, created_at, updated_at)
           VALUES ($1, $2, $3, $3, $3)
           ON CONFLICT (tenant_id, phone) DO UPDATE
               SET opted_out_at = coalesce(c.opted_out_at, EXCLUDED.opted_out_at), updated_at = EXCLUDED.updated_at""",
        tenant_id,
        phone,
        at,
    )


# --- lists and segments ------------------------------------------------------------------------------


async def insert_list(conn: Conn, list_id: str, tenant_id: str, name: str, at: datetime) -> bool:
    """False when the tenant already has a list of that name."""
    done = await conn.fetchval(
        """INSERT INTO lists (id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, name) DO NOTHING RETURNING true""",
        list_id,
        tenant_id,
        name,
        at,
    )
    return bool(done)


async def list_lists(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT l.id::text AS id, l.name, l.created_at,
                  (SELECT count(*) FROM list_members m WHERE m.list_id = l.id) AS members
           FROM lists l WHERE l.tenant_id = $1 ORDER BY l.created_at, l.name""",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def load_list(conn: Conn, tenant_id: str, list_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """SELECT l.id::text AS id, l.name, l.created_at,
                  (SELECT count(*) FROM list_members m WHERE m.list_id = l.id) AS members
           FROM lists l WHERE l.tenant_id = $1 AND l.id = $2""",
        tenant_id,
        list_id,
    )
    return dict(row) if row else None


async def delete_list(conn: Conn, tenant_id: str, list_id: str) -> bool:
    done = await conn.fetchval(
        "DELETE FROM lists WHERE tenant_id = $1 AND id = $2 RETURNING true", tenant_id, list_id
    )
    return bool(done)


async def add_members(
    conn: Conn, tenant_id: str, list_id: str, contact_ids: Sequence[int], phones: Sequence[str], at: datetime
) -> tuple[int, list[int], list[str]]:
    """Add the tenant's contacts (by id or E.164 phone); returns (added, unknown ids, unknown phones)."""
    rows = await conn.fetch(
        """SELECT id, phone FROM contacts
           WHERE tenant_id = $1 AND (id = ANY($2::bigint[]) OR phone = ANY($3::text[]))""",
        tenant_id,
        list(contact_ids),
        list(phones),
    )
    ids = [r["id"] for r in rows]
    found_ids, found_phones = set(ids), {r["phone"] for r in rows}
    status = await conn.execute(
        """INSERT INTO list_members (list_id, contact_id, added_at)
           SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u ON CONFLICT DO NOTHING""",
        list_id,
        ids,
        at,
    )
    return (
        _count(status),
        [i for i in contact_ids if i not in found_ids],
        [p for p in phones if p not in found_phones],
    )


async def remove_members(conn: Conn, list_id: str, contact_ids: Sequence[int]) -> int:
    status = await conn.execute(
        "DELETE FROM list_members WHERE list_id = $1 AND contact_id = ANY($2::bigint[])",
        list_id,
        list(contact_ids),
    )
    return _count(status)


async def insert_segment(
    conn: Conn, segment_id: str, tenant_id: str, name: str, spec: dict[str, Any], at: datetime
) -> bool:
    done = await conn.fetchval(
        """INSERT INTO segments (id, tenant_id, name, filter, created_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id, name) DO NOTHING RETURNING true""",
        segment_id,
        tenant_id,
        name,
        spec,
        at,
    )
    return bool(done)


async def list_segments(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id::text AS id, name, filter, created_at FROM segments WHERE tenant_id = $1
           ORDER BY created_at, name""",
        tenant_id,
    )
    return [dict(r) for r in rows]


async def load_segment(conn: Conn, tenant_id: str, segment_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id::text AS id, name, filter, created_at FROM segments WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        segment_id,
    )
    return dict(row) if row else None


async def delete_segment(conn: Conn, tenant_id: str, segment_id: str) -> bool:
    done = await conn.fetchval(
        "DELETE FROM segments WHERE tenant_id = $1 AND id = $2 RETURNING true", tenant_id, segment_id
    )
    return bool(done)


# --- audiences ---------------------------------------------------------------------------------------


def values_expr(names: Sequence[str]) -> str:
    """SQL for a contact's personalisation values restricted to the template's placeholders, as the text of
    a JSON object (names sorted, missing values left out): what BatchQueued carries and what the pricer keys
    its cache by. Built as text because a jsonb per recipient costs a quarter of materialising. Names are
    placeholder names ([a-z_]), checked again here because they are written into the SQL."""
    if not names:
        return "'{}'::text"
    pairs = []
    for name in sorted(set(names)):
        if not _NAME.match(name):
            raise ValueError(f"placeholder name {name!r}")
        column = _CONTACT_FIELDS.get(name) or f"c.attributes->>'{name}'"
        pairs.append(f"""'"{name}":' || to_json({column})::text""")  # NULL when the value is: skipped
    return f"'{{' || concat_ws(',', {', '.join(pairs)}) || '}}'"


Bind = Callable[[Any, str], str]  # (value, PostgreSQL type) -> an SQL expression of that type


def bind_params(params: list[Any]) -> Bind:
    """Values as $n parameters of the statement, appended to `params`."""

    def bind(value: Any, pg_type: str) -> str:
        params.append(value)
        return f"${len(params)}::{pg_type}"

    return bind


def audience_where(spec: dict[str, Any], *, marketing: bool, bind: Bind) -> str:
    """Conditions on contacts `c` for an audience spec (kind all | list | filter; a segment is resolved to
    its filter by the caller), eligibility included; values go through `bind`."""
    conds = ["c.opted_out_at IS NULL", "c.consent = 'granted'" if marketing else "c.consent <> 'denied'"]
    kind = spec["kind"]
    if kind == "list":
        conds.append(
            f"EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = {bind(spec['list_id'], 'uuid')}"
            " AND m.contact_id = c.id)"
        )
    elif kind == "filter":
        f = spec["filter"]
        if f.get("list_ids"):
            conds.append(
                f"EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = ANY({bind(f['list_ids'], 'uuid[]')})"
                " AND m.contact_id = c.id)"
            )
        if f.get("tags_any"):
            conds.append(f"c.tags && {bind(f['tags_any'], 'text[]')}")
        if f.get("tags_all"):
            conds.append(f"c.tags @> {bind(f['tags_all'], 'text[]')}")
        for key, allowed in sorted(f.get("attributes", {}).items()):
            conds.append(f"c.attributes->>{bind(key, 'text')} = ANY({bind(allowed, 'text[]')})")
        if f.get("consent"):
            conds.append(f"c.consent = ANY({bind(f['consent'], 'text[]')})")
        if f.get("created_after"):
            conds.append(f"c.created_at >= {bind(datetime.fromisoformat(f['created_after']), 'timestamptz')}")
        if f.get("created_before"):
            conds.append(f"c.created_at < {bind(datetime.fromisoformat(f['created_before']), 'timestamptz')}")
    elif kind != "all":
        raise ValueError(f"audience kind {kind!r}")
    return " AND ".join(conds)


async def preview_audience(
    conn: Conn,
    tenant_id: str,
    spec: dict[str, Any],
    *,
    marketing: bool,
    placeholders: Sequence[str],
    sample: int,
    group_limit: int,
) -> tuple[int, list[str], list[tuple[str, int]], bool]:
    """(count, sample phones, [(values JSON, recipients)], complete): recipients grouped by their
    personalisation values, so that a cost is computed once per distinct text. `complete` is False when
    there were more than `group_limit` distinct values (the caller then extrapolates)."""
    params: list[Any] = [tenant_id]
    where = audience_where(spec, marketing=marketing, bind=bind_params(params))
    count = int(
        await conn.fetchval(f"SELECT count(*) FROM contacts c WHERE c.tenant_id = $1 AND {where}", *params)
    )
    phones = await conn.fetch(
        f"SELECT c.phone FROM contacts c WHERE c.tenant_id = $1 AND {where} ORDER BY c.id LIMIT {int(sample)}",
        *params,
    )
    groups = await conn.fetch(
        f"""SELECT {values_expr(placeholders)}::text AS v, count(*) AS n FROM contacts c
            WHERE c.tenant_id = $1 AND {where} GROUP BY 1 ORDER BY 2 DESC LIMIT {int(group_limit) + 1}""",
        *params,
    )
    complete = len(groups) <= group_limit
    return count, [r["phone"] for r in phones], [(r["v"], r["n"]) for r in groups[:group_limit]], complete


async def materialise_from_contacts(
    conn: Conn,
    campaign_id: str,
    tenant_id: str,
    spec: dict[str, Any],
    *,
    marketing: bool,
    placeholders: Sequence[str],
    fresh: bool,
) -> int:
    """Create the campaign's recipients from the eligible contacts, once per (campaign, phone); returns how
    many were created. `fresh`: the campaign has no recipients yet, so the unique index alone guards the
    insert (contacts are unique per phone) and the costlier speculative ON CONFLICT insert is not needed."""
    params: list[Any] = [tenant_id, campaign_id]
    where = audience_where(spec, marketing=marketing, bind=bind_params(params))
    status = await conn.execute(
        f"""INSERT INTO recipients (campaign_id, phone, values_json)
            SELECT $2::uuid, c.phone, {values_expr(placeholders)} FROM contacts c
            WHERE c.tenant_id = $1 AND {where}
            {"" if fresh else "ON CONFLICT (campaign_id, phone) DO NOTHING"}""",
        *params,
    )
    return _count(status)


def dump(value: Any) -> str:
    return orjson.dumps(value).decode()


async def preview_inline(
    conn: Conn, campaign_id: str, tenant_id: str, sample: int, group_limit: int
) -> tuple[int, list[str], list[tuple[str, int]], bool]:
    """Like `preview_audience`, for a campaign's inline recipients (opted-out phones left out)."""
    where = """a.campaign_id = $1 AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.tenant_id = $2
               AND c.phone = a.phone AND c.opted_out_at IS NOT NULL)"""
    count = int(
        await conn.fetchval(f"SELECT count(*) FROM campaign_audience a WHERE {where}", campaign_id, tenant_id)
    )
    phones = await conn.fetch(
        f"SELECT a.phone FROM campaign_audience a WHERE {where} ORDER BY a.phone LIMIT {int(sample)}",
        campaign_id,
        tenant_id,
    )
    groups = await conn.fetch(
        f"""SELECT a."values"::text AS v, count(*) AS n FROM campaign_audience a WHERE {where}
            GROUP BY 1 ORDER BY 2 DESC LIMIT {int(group_limit) + 1}""",
        campaign_id,
        tenant_id,
    )
    complete = len(groups) <= group_limit
    return count, [r["phone"] for r in phones], [(r["v"], r["n"]) for r in groups[:group_limit]], complete
