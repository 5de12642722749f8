"""Synthetic event logs, shaped as the enqueuer, sender, dlr-ingest and link service publish them: inputs of
the projector's property tests (random interleavings must converge) and of its benchmark. A log is a set
of partitions; everything is deterministic for a given `random.Random`."""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from shared.events import (
    ApiKeyIssued,
    BatchAmbiguous,
    BatchClaimed,
    BatchDeferred,
    BatchFailed,
    BatchQueued,
    BatchRecipient,
    BatchResolved,
    BatchSent,
    CampaignCompleted,
    CampaignCreated,
    CampaignEnqueued,
    CampaignUpdated,
    Channel,
    ContactUnsubscribed,
    CreditsDebited,
    CreditsReleased,
    CreditsReserved,
    Event,
    LinkClicked,
    MessageType,
    RecipientResult,
    RunKind,
    TenantRegistered,
    encode,
    envelope_for,
)
from shared.topics import (
    CAMPAIGN_EVENTS,
    DELIVERY_REPORTS,
    ENGAGEMENT_EVENTS,
    SMS_BATCHES,
    SMS_OUTCOMES,
    TENANT_EVENTS,
)

BASE_TIME = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
# (raw status, mapped status): the mix a report stream draws from.
REPORT_KINDS = (("Delivered", "delivered"), ("Failure", "failed"), ("Sent", "sent"), ("Pending", "unknown"))


def partition_for(key: bytes | None, partitions: int) -> int:
    return zlib.crc32(key or b"") % partitions


@dataclass(frozen=True)
class Record:
    """One record of a partition: what a consumer poll hands over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Log:
    partitions: int = 3
    streams: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = field(default_factory=dict)

    def append(self, topic: str, key: str | None, event: Event, **envelope: object) -> None:
        raw_key = key.encode() if key is not None else None
        value = encode(envelope_for(event, **envelope))  # type: ignore[arg-type]
        self.append_raw(topic, raw_key, value)

    def append_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.streams.setdefault((topic, partition_for(key, self.partitions)), []).append((key, value))

    def duplicate(self, rng: random.Random, share: float) -> None:
        """Publish a share of the records again, each later in its own partition (as an outbox relay
        does after a crash between the broker's ack and the delete)."""
        for stream in self.streams.values():
            for i in sorted(rng.sample(range(len(stream)), int(len(stream) * share)), reverse=True):
                stream.insert(rng.randint(i + 1, len(stream)), stream[i])

    def extend(self, other: Log) -> None:
        """`other`'s records after this log's, partition by partition (as if published later)."""
        for tp, stream in other.streams.items():
            self.streams.setdefault(tp, []).extend(stream)

    def segments(self, count: int) -> list[Log]:
        """The log cut into `count` consecutive parts, each partition cut alike: publishing the parts one
        after the other publishes the whole log in order."""
        parts = [Log(self.partitions) for _ in range(count)]
        for tp, stream in self.streams.items():
            size = -(-len(stream) // count)
            for i, part in enumerate(parts):
                if stream[i * size : (i + 1) * size]:
                    part.streams[tp] = stream[i * size : (i + 1) * size]
        return parts

    def records(self) -> dict[tuple[str, int], list[Record]]:
        return {
            tp: [Record(tp[0], tp[1], offset, key, value) for offset, (key, value) in enumerate(stream)]
            for tp, stream in sorted(self.streams.items())
        }

    def in_order(self) -> list[Record]:
        """Every record, partition after partition."""
        return [r for stream in self.records().values() for r in stream]


def interleave(log: Log, rng: random.Random, *, max_poll: int, redeliver: float = 0.0) -> list[list[Record]]:
    """Polls that take the partitions in a random interleaving (each partition in its own order), of random
    sizes, some delivered twice (as after a rebalance)."""
    pending = {tp: list(rs) for tp, rs in log.records().items() if rs}
    polls: list[list[Record]] = []
    while pending:
        size = rng.randint(1, max_poll)
        poll: list[Record] = []
        while pending and len(poll) < size:
            tp = rng.choice(sorted(pending))
            take = rng.randint(1, max(1, size - len(poll)))
            poll += pending[tp][:take]
            del pending[tp][:take]
            if not pending[tp]:
                del pending[tp]
        polls.append(poll)
        if polls and rng.random() < redeliver:
            polls.append(list(rng.choice(polls)))
    return polls


def _ids(rng: random.Random) -> Iterator[str]:
    while True:
        yield str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Tenant:
    tenant_id: str
    api_key_hash: str


def add_tenant(log: Log, rng: random.Random, channel: Channel = Channel.RETAIL) -> Tenant:
    ids = _ids(rng)
    tenant_id = next(ids)
    at = BASE_TIME
    log.append(
        TENANT_EVENTS,
        tenant_id,
        TenantRegistered(name=f"Shop {tenant_id[:4]}", channel=channel, default_region="GR"),
        occurred_at=at,
        tenant_id=tenant_id,
        event_id=next(ids),
    )
    key_hash = f"{rng.getrandbits(256):064x}"
    log.append(
        TENANT_EVENTS,
        tenant_id,
        ApiKeyIssued(key_id=f"key_{next(ids)[:8]}", key_hash=key_hash),
        occurred_at=at,
        tenant_id=tenant_id,
        event_id=next(ids),
    )
    return Tenant(tenant_id, key_hash)


@dataclass(frozen=True)
class CampaignShape:
    """What happens to one campaign. Shares are drawn per recipient (reject) or per batch (the rest)."""

    recipients: int
    batch_size: int
    reject_share: float = 0.0
    failed_batch_share: float = 0.0
    ambiguous_batch_share: float = 0.0
    deferred_batch_share: float = 0.0
    max_reports: int = 2  # per accepted message, drawn from REPORT_KINDS
    unknown_reports: int = 0  # reports for message ids nobody sent
    clicks: int = 0
    unsubscribes: int = 0
    retry_failed: bool = False  # a second run for the rejected recipients
    resolve_ambiguous: bool = False  # ambiguous batches get BatchResolved, in two steps
    resume_deferred: bool = False  # deferred batches' members sent again in resume runs (at most two)
    channel: Channel = Channel.RETAIL


@dataclass
class Counter:
    value: int = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def add_campaign(
    log: Log,
    rng: random.Random,
    tenant: Tenant,
    shape: CampaignShape,
    recipient_ids: Counter,
    messages: Counter,
) -> str:
    """Append one campaign's events to `log`; returns its id."""
    return _CampaignWriter(log, rng, tenant, shape, recipient_ids, messages).write()


class _CampaignWriter:
    def __init__(
        self, log: Log, rng: random.Random, tenant: Tenant, shape: CampaignShape, recipient_ids: Counter,
        messages: Counter,
    ) -> None:  # fmt: skip
        self.log, self.rng, self.tenant, self.shape = log, rng, tenant, shape
        self.recipient_ids, self.messages = recipient_ids, messages
        self.ids = _ids(rng)
        self.cid = next(self.ids)
        self.seconds = 0
        self.accepted: list[tuple[str, int]] = []  # (message id, recipient id)
        self.rejected: list[tuple[int, str]] = []
        self.deferred: list[tuple[int, str]] = []

    def now(self) -> datetime:
        self.seconds += 1
        return BASE_TIME + timedelta(seconds=self.seconds)

    def emit(self, topic: str, event: Event, event_id: str | None = None) -> None:
        self.log.append(
            topic,
            self.cid,
            event,
            occurred_at=self.now(),
            tenant_id=self.tenant.tenant_id,
            campaign_id=self.cid,
            event_id=event_id or next(self.ids),
        )

    def write(self) -> str:
        shape, rng = self.shape, self.rng
        self.emit(CAMPAIGN_EVENTS, CampaignCreated(
            name=f"Sale {self.cid[:4]}", text="Hi {{first_name}}", sender_id=None,
            message_type=MessageType.MARKETING, channel=shape.channel, created_at=self.now(),
        ))  # fmt: skip
        self.emit(CAMPAIGN_EVENTS, CampaignUpdated(
            name=f"Autumn sale {self.cid[:4]}", text="Hi {{first_name}}, 20% off", sender_id="Shop",
            message_type=MessageType.MARKETING, updated_at=self.now(),
        ))  # fmt: skip
        people = [
            (self.recipient_ids.next(), f"+30694{rng.randrange(10**7):07d}") for _ in range(shape.recipients)
        ]
        self.run(RunKind.INITIAL, people)
        self.resume()
        if shape.retry_failed and self.rejected:
            again, self.rejected = self.rejected, []
            self.run(RunKind.RETRY_FAILED, again)
            self.resume()  # a paused retry's members still hold their failed result
        for mid, _ in self.accepted:
            for _ in range(rng.randint(0, shape.max_reports)):
                raw, status = rng.choice(REPORT_KINDS)
                self.report(mid, raw, status)
        for _ in range(shape.unknown_reports):
            self.report(f"X{rng.getrandbits(64):016x}", "Delivered", "delivered")
        reached = [rid for _, rid in self.accepted]
        for _ in range(shape.clicks if reached else 0):
            self.emit(
                ENGAGEMENT_EVENTS,
                LinkClicked(recipient_id=rng.choice(reached), link="offer", clicked_at=self.now()),
            )
        for _ in range(shape.unsubscribes if reached else 0):
            self.emit(ENGAGEMENT_EVENTS, ContactUnsubscribed(
                recipient_id=rng.choice(reached), phone="+30", unsubscribed_at=self.now(),
            ))  # fmt: skip
        return self.cid

    def resume(self) -> None:
        """Runs of the members of deferred batches (paused, then resumed), at most twice."""
        if not self.shape.resume_deferred:
            return
        for _ in range(2):
            if not self.deferred:
                return
            again, self.deferred = self.deferred, []
            self.run(RunKind.RESUME, again)

    def run(self, kind: RunKind, members: list[tuple[int, str]]) -> None:
        shape, rng = self.shape, self.rng
        run = f"r{rng.getrandbits(32):08x}"
        chunks = [members[i : i + shape.batch_size] for i in range(0, len(members), shape.batch_size)]
        self.emit(CAMPAIGN_EVENTS, CampaignEnqueued(
            run_token=run, run_kind=kind, total=len(members), campaign_total=shape.recipients,
            batch_count=len(chunks), batch_size=shape.batch_size, credits_reserved=len(members), started_at=self.now(),
        ))  # fmt: skip
        self.emit(CAMPAIGN_EVENTS, CreditsReserved(run_token=run, credits=len(members)))
        accepted_before = len(self.accepted)
        for no, chunk in enumerate(chunks):
            self.batch(run, no, chunk)
        debited = len(self.accepted) - accepted_before
        self.emit(CAMPAIGN_EVENTS, CreditsDebited(run_token=run, credits=debited))
        self.emit(CAMPAIGN_EVENTS, CreditsReleased(run_token=run, credits=len(members) - debited))
        self.emit(CAMPAIGN_EVENTS, CampaignCompleted(
            run_token=run, accepted=debited, failed=len(members) - debited, finished_at=self.now(),
        ))  # fmt: skip

    def batch(self, run: str, no: int, chunk: list[tuple[int, str]]) -> None:
        shape, rng = self.shape, self.rng
        bid = f"{self.cid}:{run}:{no}"
        ids = tuple(i for i, _ in chunk)
        self.emit(SMS_BATCHES, BatchQueued(
            batch_id=bid, run_token=run, batch_no=no, sender_id="Shop", template="Hi",
            message_type=MessageType.MARKETING, recipients=tuple(BatchRecipient(id=i, phone=p) for i, p in chunk),
        ))  # fmt: skip
        draw = rng.random()
        if draw < shape.deferred_batch_share:
            self.emit(SMS_OUTCOMES, BatchDeferred(batch_id=bid, run_token=run, recipient_ids=ids, reason="paused",
                                                  at=self.now()), f"{bid}:BatchDeferred")  # fmt: skip
            self.deferred += chunk
            return
        self.emit(SMS_OUTCOMES, BatchClaimed(batch_id=bid, run_token=run, recipient_ids=ids, claimed_at=self.now()),
                  f"{bid}:BatchClaimed")  # fmt: skip
        draw -= shape.deferred_batch_share
        if draw < shape.failed_batch_share:
            self.emit(SMS_OUTCOMES, BatchFailed(batch_id=bid, run_token=run, recipient_ids=ids, error="HTTP 400",
                                                retry_count=0, failed_at=self.now()), f"{bid}:BatchFailed")  # fmt: skip
            self.rejected += chunk
            return
        draw -= shape.failed_batch_share
        if draw < shape.ambiguous_batch_share:
            self.emit(SMS_OUTCOMES, BatchAmbiguous(batch_id=bid, run_token=run, recipient_ids=ids, reason="HTTP 503",
                                                   retry_count=1, at=self.now()), f"{bid}:BatchAmbiguous")  # fmt: skip
            if shape.resolve_ambiguous:
                half = len(chunk) // 2
                for step, part in enumerate((chunk[:half], chunk[half:])):
                    found = tuple(self.result(rid, phone) for rid, phone in part)
                    remaining = len(chunk) - half if step == 0 else 0
                    self.emit(SMS_OUTCOMES, BatchResolved(
                        batch_id=bid, run_token=run, resolution="status_lookup", bulk_id=f"bulk-{bid}",
                        results=found, remaining=remaining, resolved_at=self.now(),
                    ), f"{bid}:BatchResolved:{step}")  # fmt: skip
            return
        results = [self.result(rid, phone) for rid, phone in chunk]
        self.emit(SMS_OUTCOMES, BatchSent(batch_id=bid, run_token=run, bulk_id=f"bulk-{bid}", results=tuple(results),
                                          retry_count=0, sent_at=self.now()), f"{bid}:BatchSent")  # fmt: skip

    def result(self, rid: int, phone: str) -> RecipientResult:
        if self.rng.random() < self.shape.reject_share:
            self.rejected.append((rid, phone))
            return RecipientResult(id=rid, phone=phone, error="invalid destination")
        mid = f"M{self.messages.next():012d}"
        self.accepted.append((mid, rid))
        return RecipientResult(id=rid, phone=phone, message_id=mid)

    def report(self, message_id: str, raw: str, status: str) -> None:
        at = self.now()
        provider_time = at if self.rng.random() < 0.8 else None
        value = report_bytes(next(self.ids), message_id, raw, status, at, provider_time)
        self.log.append_raw(DELIVERY_REPORTS, message_id.encode(), value)


def report_bytes(
    event_id: str, message_id: str, raw: str, status: str, at: datetime, provider_time: datetime | None
) -> bytes:
    """A DeliveryReported envelope as dlr-ingest publishes it (built directly: benchmarks need millions)."""
    stamp = at.isoformat().replace("+00:00", "Z")
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": "DeliveryReported",
            "version": 1,
            "occurred_at": stamp,
            "tenant_id": None,
            "campaign_id": None,
            "causation_id": None,
            "correlation_id": None,
            "payload": {
                "provider_message_id": message_id,
                "raw_status": raw,
                "status": status,
                "error": "expired" if status == "failed" else None,
                "provider_time": provider_time.isoformat().replace("+00:00", "Z") if provider_time else None,
                "received_at": stamp,
                "source": "webhook",
            },
        }
    )
