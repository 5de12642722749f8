"""Contact routes: streamed imports, contacts, lists and members, segments, audience preview."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from enqueuer import audiences, domain
from enqueuer.api import ContactPatch, ListIn, MembersIn, PreviewIn, SegmentIn
from enqueuer.store import contacts as store
from enqueuer.store import tenants as tenant_store
from enqueuer.web import Deps, check_uuid
from shared.events import MessageType
from shared.web import ApiError


def contact_body(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": c["id"],
        "phone": c["phone"],
        "firstName": c["first_name"],
        "lastName": c["last_name"],
        "email": c["email"],
        "attributes": c["attributes"],
        "tags": c["tags"],
        "consent": c["consent"],
        "optedOut": c["opted_out_at"] is not None,
        "optedOutAt": c["opted_out_at"],
        "createdAt": c["created_at"],
        "updatedAt": c["updated_at"],
    }


def list_body(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"],
        "name": item["name"],
        "members": item["members"],
        "createdAt": item["created_at"],
    }


def segment_body(item: dict[str, Any]) -> dict[str, Any]:
    return {"id": item["id"], "name": item["name"], "filter": item["filter"], "createdAt": item["created_at"]}


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    Tenant = Annotated[tenant_store.Tenant, Depends(deps.tenant)]

    @r.post("/api/contacts/import")
    async def import_contacts(
        request: Request,
        t: Tenant,
        list_id: Annotated[str | None, Query(alias="listId")] = None,
        consent: Annotated[Literal["granted", "unknown", "denied"], Query()] = "granted",
    ) -> dict[str, Any]:
        """CSV (text/csv, header row with a phone column) or JSON (an array of objects, or NDJSON)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in ("text/csv", "application/csv", "text/plain"):
            fmt: Literal["csv", "json"] = "csv"
        elif media in ("application/json", "application/x-ndjson", "application/ndjson"):
            fmt = "json"
        else:
            raise ApiError(
                415, "UNSUPPORTED_MEDIA_TYPE", "Send text/csv, application/json or application/x-ndjson."
            )
        report = await audiences.import_contacts(
            deps.pool,
            t,
            request.stream(),
            fmt=fmt,
            default_consent=consent,
            list_id=check_uuid(list_id, "list") if list_id else None,
            max_errors=deps.settings.import_max_errors,
            at=deps.clock(),
        )
        return report.body(deps.settings.import_max_errors)

    @r.get("/api/contacts")
    async def list_contacts(
        t: Tenant,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[int, Query(ge=0)] = 0,
        phone: str | None = None,
    ) -> dict[str, Any]:
        if phone is not None:
            try:
                phone = domain.normalise_phone(phone, t.default_region)
            except ValueError as exc:
                raise ApiError(400, "INVALID_PHONE", str(exc)) from None
        async with deps.pool.acquire() as conn:
            rows = await store.list_contacts(conn, t.id, limit=limit, after_id=after, phone=phone)
            total = await store.count_contacts(conn, t.id)
        return {
            "items": [contact_body(c) for c in rows],
            "total": total,
            "next": rows[-1]["id"] if rows else None,
        }

    @r.get("/api/contacts/{contact_id}")
    async def get_contact(contact_id: int, t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            found = await store.load_contact(conn, t.id, contact_id)
        if found is None:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "No such contact.")
        return contact_body(found)

    @r.patch("/api/contacts/{contact_id}")
    async def patch_contact(contact_id: int, body: ContactPatch, t: Tenant) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            raise ApiError(400, "VALIDATION_ERROR", "Nothing to change.")
        if "tags" in changes and changes["tags"] is not None:
            changes["tags"] = sorted({x.strip().lower() for x in changes["tags"] if x.strip()})
        if any(
            changes.get(k) is None for k in ("attributes", "tags", "consent", "opted_out") if k in changes
        ):
            raise ApiError(400, "VALIDATION_ERROR", "attributes, tags, consent and optedOut cannot be null.")
        async with deps.pool.acquire() as conn:
            updated = await store.update_contact(conn, t.id, contact_id, changes, deps.clock())
        if updated is None:
            raise ApiError(404, "RESOURCE_NOT_FOUND", "No such contact.")
        return contact_body(updated)

    @r.post("/api/lists", status_code=201)
    async def create_list(body: ListIn, t: Tenant) -> dict[str, Any]:
        return list_body(await audiences.create_list(deps.pool, t.id, body.name.strip(), deps.clock()))

    @r.get("/api/lists")
    async def lists(t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            return {"items": [list_body(x) for x in await store.list_lists(conn, t.id)]}

    async def owned_list(t: tenant_store.Tenant, list_id: str) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            found = await store.load_list(conn, t.id, check_uuid(list_id, "list"))
        if found is None:
            raise ApiError(404, "LIST_NOT_FOUND", "No such list.")
        return found

    @r.get("/api/lists/{list_id}")
    async def get_list(list_id: str, t: Tenant) -> dict[str, Any]:
        return list_body(await owned_list(t, list_id))

    @r.delete("/api/lists/{list_id}")
    async def delete_list(list_id: str, t: Tenant) -> dict[str, Any]:
        found = await owned_list(t, list_id)
        async with deps.pool.acquire() as conn:
            await store.delete_list(conn, t.id, found["id"])
        return {"id": found["id"], "deleted": True}

    @r.post("/api/lists/{list_id}/members")
    async def add_members(list_id: str, body: MembersIn, t: Tenant) -> dict[str, Any]:
        found = await owned_list(t, list_id)
        phones, bad = [], []
        for p in body.phones:
            try:
                phones.append(domain.normalise_phone(p, t.default_region))
            except ValueError as exc:
                bad.append({"phone": p, "reason": str(exc)})
        if bad:
            raise ApiError(400, "INVALID_PHONES", f"{len(bad)} phone(s) are not valid.", errors=bad[:100])
        async with deps.pool.acquire() as conn, conn.transaction():
            added, unknown_ids, unknown_phones = await store.add_members(
                conn, t.id, found["id"], body.contact_ids, phones, deps.clock()
            )
        return {"added": added, "unknownContactIds": unknown_ids, "unknownPhones": unknown_phones}

    @r.delete("/api/lists/{list_id}/members")
    async def remove_members(list_id: str, body: MembersIn, t: Tenant) -> dict[str, Any]:
        found = await owned_list(t, list_id)
        async with deps.pool.acquire() as conn:
            removed = await store.remove_members(conn, found["id"], body.contact_ids)
        return {"removed": removed}

    @r.post("/api/segments", status_code=201)
    async def create_segment(body: SegmentIn, t: Tenant) -> dict[str, Any]:
        spec = _filter_spec(body)
        return segment_body(
            await audiences.create_segment(deps.pool, t.id, body.name.strip(), spec, deps.clock())
        )

    @r.get("/api/segments")
    async def segments(t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            return {"items": [segment_body(x) for x in await store.list_segments(conn, t.id)]}

    @r.get("/api/segments/{segment_id}")
    async def get_segment(segment_id: str, t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            found = await store.load_segment(conn, t.id, check_uuid(segment_id, "segment"))
        if found is None:
            raise ApiError(404, "SEGMENT_NOT_FOUND", "No such segment.")
        return segment_body(found)

    @r.delete("/api/segments/{segment_id}")
    async def delete_segment(segment_id: str, t: Tenant) -> dict[str, Any]:
        async with deps.pool.acquire() as conn:
            if not await store.delete_segment(conn, t.id, check_uuid(segment_id, "segment")):
                raise ApiError(404, "SEGMENT_NOT_FOUND", "No such segment.")
        return {"id": segment_id, "deleted": True}

    @r.post("/api/audience/preview")
    async def preview(body: PreviewIn, t: Tenant) -> dict[str, Any]:
        try:
            spec = body.audience.spec()
        except ValueError as exc:
            raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
        text = audiences.PreviewText(
            body.text,
            body.message_type == MessageType.MARKETING,
            body.offer_url is not None,
            deps.settings.links.base_url,
        )
        return await audiences.preview(deps.pool, t.id, spec, text)

    return r


def _filter_spec(body: SegmentIn) -> dict[str, Any]:
    try:
        return body.filter.spec()
    except ValueError as exc:
        raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
