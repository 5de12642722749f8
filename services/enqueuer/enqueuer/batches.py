"""Planned batches as bytes: pre-encoded BatchQueued events of at most a batch size of recipients and a byte
limit, their run_batches rows, and the reader of the audience copy's COPY text. No I/O.

A BatchQueued envelope is encoded once per batch, with its recipients spliced in as JSON already put together:
building a model per recipient would cost more than the rest of the enqueue. A unit test decodes the result
with `shared.events.decode` and compares it with the recipient-by-recipient form byte for byte.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import orjson

from enqueuer import domain
from enqueuer.pricing import Pricer
from enqueuer.store import campaigns as campaign_store
from enqueuer.store import copying
from enqueuer.store import runs as run_store
from enqueuer.store import tenants as tenant_store
from shared.events import BatchQueued, MessageType, envelope_for
from shared.topics import SMS_BATCHES

BATCH_EVENT_NAMESPACE = uuid.UUID("3c1f8e0a-5b7d-4e21-9f3a-7d2c4b9e6a15")
_ITEM_PHONE, _ITEM_VALUES, _ITEM_NEXT = ',"phone":"', '","values":', '},{"id":'  # see BatchWriter.add_rows


def batch_event_id(batch_id: str) -> str:
    """A batch keeps its event id when it is republished, so a re-publication is recognisable."""
    return str(uuid.uuid5(BATCH_EVENT_NAMESPACE, batch_id))


class BatchWriter:
    """Turns chunks of recipients into pre-encoded BatchQueued events of at most `batch_size` recipients
    (a chunk) and at most `max_bytes` of JSON (a chunk is split when it would not fit the broker's message
    limit), and into their run_batches rows. Batch ids are `{campaign}:{run}:{index}`, so the same chunks
    give the same ids. `take` hands over what was encoded since it was last called."""

    def __init__(
        self,
        campaign: campaign_store.Campaign,
        tenant: tenant_store.Tenant,
        run_token: str,
        pricer: Pricer,
        max_bytes: int,
        at: datetime,
    ) -> None:
        self.campaign = campaign
        self.run_token = run_token
        self.pricer = pricer
        self.max_bytes = max_bytes
        self.at = at
        self.sender_id = campaign.sender_id or tenant.sender_id
        self.text = BatchText(
            campaign.id, tenant.id, campaign.text, campaign.message_type, self.sender_id, campaign.offer_url
        )
        self.key = campaign.id.encode()
        self.batches = 0
        self.recipients = 0
        self.cost = 0
        self._values: list[bytes] = []
        self._rows: list[tuple[str, int, int, int, str]] = []

    def add_chunk(self, chunk: run_store.Chunk) -> None:
        self.add_rows(list(map(str, chunk.ids)), chunk.phones, chunk.values)

    def add_rows(self, ids: list[str], phones: list[str], values: list[str]) -> None:
        """Recipients (id, E.164 phone, values as JSON text) of at most one batch by count. The batch's JSON
        is put together by joins and slice assignments (C loops), not by formatting each recipient: this
        runs once per recipient of every campaign."""
        n = len(ids)
        if n == 0:
            return
        # Six slots a recipient: id, ',"phone":"', phone, '","values":', values, '},{"id":'
        parts: list[str] = [_ITEM_PHONE] * (6 * n)
        parts[0::6] = ids
        parts[2::6] = phones
        parts[3::6] = [_ITEM_VALUES] * n
        parts[4::6] = values
        parts[5::6] = [_ITEM_NEXT] * n
        parts[-1] = "}]"
        body = '[{"id":' + "".join(parts)
        size = len(body) if body.isascii() else len(body.encode())
        if size <= self.max_bytes:
            if self.pricer.fixed is not None:
                cost = self.pricer.fixed * n
            else:
                cost = sum(self.pricer.parts_for_json(v) * k for v, k in Counter(values).items())
            self._close(body, ids, cost)
            return
        # Too large for one broker message: split, keeping the order.
        items = [recipient_json(i, p, v) for i, p, v in zip(ids, phones, values, strict=True)]
        sizes = [len(item.encode()) + 1 for item in items]
        costs = self.pricer.parts_for_each(values)
        start = size = 0
        for i in range(n):
            if i > start and size + sizes[i] + 1 > self.max_bytes:
                self._close("[" + ",".join(items[start:i]) + "]", ids[start:i], sum(costs[start:i]))
                start, size = i, 0
            size += sizes[i]
        self._close("[" + ",".join(items[start:]) + "]", ids[start:], sum(costs[start:]))

    def _close(self, recipients_json: str, ids: list[str], cost: int) -> None:
        index = self.batches
        bid = domain.batch_id(self.campaign.id, self.run_token, index)
        self._values.append(encode_batch(self.text, bid, self.run_token, index, recipients_json, self.at))
        self._rows.append((bid, index, len(ids), cost, "{" + ",".join(ids) + "}"))
        self.batches += 1
        self.recipients += len(ids)
        self.cost += cost

    def take(self) -> run_store.PlannedRows:
        taken = run_store.PlannedRows(SMS_BATCHES, self.key, self._values, self._rows)
        self._values, self._rows = [], []
        return taken


class CopyRowsEncoder:
    """Takes the copied recipients as rows of COPY text (id, campaign, phone, values; tab-separated, a
    newline after each) and encodes them a batch at a time into the spool. Rows are cut into fields by two
    string-wide calls, not row by row. A value's backslashes arrive doubled, its only COPY escape: JSON text
    holds no raw control characters or tabs, and ids, campaign ids and E.164 phones no backslashes."""

    def __init__(self, writer: BatchWriter, spool: copying.BatchSpool, batch_size: int) -> None:
        self.writer, self.spool = writer, spool
        self._per_batch = 4 * batch_size
        self._fields: list[str] = []

    def __call__(self, rows: str) -> None:
        if "\\" in rows:
            rows = rows.replace("\\\\", "\\")
        fields = self._fields
        fields += rows[:-1].replace("\n", "\t").split("\t")
        while len(fields) >= self._per_batch:
            self._encode(fields[: self._per_batch])
            del fields[: self._per_batch]

    def finish(self) -> None:
        if self._fields:
            self._encode(self._fields)
            self._fields = []

    def _encode(self, fields: list[str]) -> None:
        self.writer.add_rows(fields[0::4], fields[2::4], fields[3::4])
        self.spool.add(self.writer.take())


@dataclass(frozen=True)
class BatchText:
    """What every batch of a run carries besides its recipients."""

    campaign_id: str
    tenant_id: str
    template: str
    message_type: str
    sender_id: str | None
    offer_url: str | None


def encode_batch(
    text: BatchText, batch_id: str, run_token: str, index: int, recipients_json: str, at: datetime
) -> bytes:
    """A BatchQueued envelope whose recipients are spliced in as already-encoded JSON: building a model per
    recipient would cost more than the rest of the enqueue."""
    head = BatchQueued(
        batch_id=batch_id,
        run_token=run_token,
        batch_no=index,
        sender_id=text.sender_id,
        template=text.template,
        message_type=MessageType(text.message_type),
        recipients=(),
        offer_url=text.offer_url,
    )
    envelope = envelope_for(
        head,
        occurred_at=at,
        tenant_id=text.tenant_id,
        campaign_id=text.campaign_id,
        event_id=batch_event_id(batch_id),
    ).model_dump(mode="json")
    envelope["payload"]["recipients"] = orjson.Fragment(recipients_json.encode())
    return orjson.dumps(envelope)


def recipient_json(rid: int | str, phone: str, values_json: str) -> str:
    """One recipient as JSON. Phones are stored only in E.164 (`+` and digits, from `normalise_phone`) and
    values are JSON printed by PostgreSQL, so both go in as they are."""
    return f'{{"id":{rid},"phone":"{phone}","values":{values_json}}}'
