"""The webhook's hot path to bytes: DeliveryReported envelopes encoded straight from plain values (no pydantic
model per report) and the Kafka default partitioner's murmur2, so every report costs a few microseconds.

The output is byte for byte what `shared.events.encode(envelope_for(DeliveryReported(...)))` writes; a unit
test holds the two together.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from datetime import datetime

import orjson

from dlr_ingest.domain import Report
from shared.events import DeliveryReported

_TYPE = "DeliveryReported"
_VERSION = DeliveryReported.VERSION
_MASK32 = 0xFFFFFFFF
_M = 0x5BD1E995
_SEED = 0x9747B28C
_WORDS = struct.Struct("<I")


def event_ids(count: int) -> Iterator[str]:
    """`count` distinct version-4 UUIDs for one request: one random UUID, with its lowest 32 bits (inside the
    node field, clear of the version and variant bits) XOR-ed with the report's index. Unique within the
    request, and as unlikely as any v4 UUID to collide across requests, for one `urandom` call."""
    base = uuid.uuid4().int
    for i in range(count):
        h = f"{base ^ i:032x}"
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode_reports(
    reports: list[Report],
    *,
    received_at: datetime,
    source: str,
    tenant_id: str | None = None,
    campaign_id: str | None = None,
) -> list[bytes]:
    """One encoded envelope per report, all received (and occurring) at `received_at`."""
    at = orjson.dumps(received_at, option=orjson.OPT_UTC_Z).decode()[1:-1]
    out = []
    dumps = orjson.dumps
    utc_z = orjson.OPT_UTC_Z
    for event_id, r in zip(event_ids(len(reports)), reports, strict=True):
        out.append(
            dumps(
                {
                    "event_id": event_id,
                    "type": _TYPE,
                    "version": _VERSION,
                    "occurred_at": at,
                    "tenant_id": tenant_id,
                    "campaign_id": campaign_id,
                    "causation_id": None,
                    "correlation_id": None,
                    "payload": {
                        "provider_message_id": r.message_id,
                        "raw_status": r.raw_status,
                        "status": r.status.value,
                        "error": r.error,
                        "provider_time": r.provider_time,
                        "received_at": at,
                        "source": source,
                    },
                },
                option=utc_z,
            )
        )
    return out


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java client `Utils.murmur2`), equal to `aiokafka.partitioner.murmur2`, reading four
    bytes at a time: about three times faster than aiokafka's byte-wise version."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:whole]):
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions` (numbered 0..n-1)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
