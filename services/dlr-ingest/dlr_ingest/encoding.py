"""The webhook's hot path to bytes: DeliveryReported envelopes encoded straight from plain values (no pydantic
model per report) and the Kafka default partitioner's murmur2, so every report costs a few microseconds.

The output is byte for byte what `shared.events.encode(envelope_for(DeliveryReported(...)))` writes; a unit
test holds the two together.
"""

from __future__ import annotations

import os
import random
import struct
from datetime import datetime

import orjson

from dlr_ingest.domain import Report
from shared.events import DeliveryReported

_TYPE = "DeliveryReported"
_VERSION = DeliveryReported.VERSION
_MASK32 = 0xFFFFFFFF
_M = 0x5BD1E995
_SEED = 0x9747B28C
# Version 4 and the RFC 4122 variant, set in 128 random bits.
_V4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_V4_SET = (0x4 << 76) | (0x2 << 62)
_IDS = random.Random()  # seeded from os.urandom; a forked child reseeds, so it never repeats its parent's ids
os.register_at_fork(after_in_child=_IDS.seed)
# Unpackers for keys of up to 128 bytes (message ids are at most 100 characters).
_WORDS = tuple(struct.Struct(f"<{n}I") for n in range(33))


def event_ids(count: int, _random: random.Random = _IDS) -> list[str]:
    """`count` distinct version-4 UUIDs for one request: one random UUID whose last 8 hex digits (inside the
    node field, clear of the version and variant bits) are XOR-ed with the report's index. Unique within the
    request, and as unlikely as any v4 UUID to collide across requests; drawn from a generator seeded from
    the OS (a third of `uuid4`'s cost, which reads `urandom` every time: these ids are unique, not secret)."""
    h = f"{_random.getrandbits(128) & _V4_CLEAR | _V4_SET:032x}"
    head, low = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:24]}", int(h[24:], 16)
    return [f"{head}{low ^ i:08x}" for i in range(count)]


def encode_reports(
    reports: list[Report],
    *,
    received_at: datetime,
    source: str,
    tenant_id: str | None = None,
    campaign_id: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """(key, value) records for delivery.reports: the message id, and the envelope of its DeliveryReported,
    every report received (and occurring) at `received_at`."""
    at = orjson.dumps(received_at, option=orjson.OPT_UTC_Z).decode()[1:-1]
    dumps = orjson.dumps
    utc_z = orjson.OPT_UTC_Z
    return [
        (
            r.message_id.encode(),
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
                        "status": r.status,  # a StrEnum: orjson writes its value
                        "error": r.error,
                        "provider_time": r.provider_time,
                        "received_at": at,
                        "source": source,
                    },
                },
                option=utc_z,
            ),
        )
        for event_id, r in zip(event_ids(len(reports)), reports, strict=True)
    ]


def murmur2(data: bytes, _words: tuple[struct.Struct, ...] = _WORDS) -> int:
    """Kafka's murmur2 (Java client `Utils.murmur2`), equal to `aiokafka.partitioner.murmur2`, unpacking the
    whole words at once: about twice as fast as aiokafka's byte-wise version."""
    m, mask = _M, _MASK32
    length = len(data)
    h = (_SEED ^ length) & mask
    whole = length & ~3
    n = whole >> 2
    words = _words[n].unpack_from(data) if n < len(_words) else struct.unpack_from(f"<{n}I", data)
    for k in words:
        k = (k * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h = ((h ^ data[whole]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def murmur2_many(keys: list[bytes]) -> list[int]:
    """`murmur2` of every key, computed side by side: keys of one length are packed into one big integer,
    a 64-bit lane each, and every step of the hash runs on all lanes at once (SWAR). A lane holds a 32-bit
    value and is multiplied by a 31-bit constant, so no carry crosses into the next lane; right shifts are
    masked back to 32 bits per lane. About six times faster per key than `murmur2` for a body of reports."""
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    out = [0] * len(keys)
    m = _M
    for length, where in by_length.items():
        group = [keys[i] for i in where]
        n = len(group)
        if n < 4:  # packing costs more than it saves
            for i, key in zip(where, group, strict=True):
                out[i] = murmur2(key)
            continue
        words, extra = length >> 2, length & 3
        per_key = words + (1 if extra else 0)
        pad = b"\0" * (-length % 4)
        # Each key zero-padded to whole words; the padded tail word XORs in exactly the tail bytes.
        ints = struct.unpack(f"<{n * per_key}I", pad.join(group) + pad)
        lanes = struct.Struct(f"<{n}Q")
        mask = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * n, "little")
        h = int.from_bytes(lanes.pack(*([(_SEED ^ length) & _MASK32] * n)), "little")
        for j in range(words):
            k = int.from_bytes(lanes.pack(*ints[j::per_key]), "little")
            k = (k * m) & mask
            k = ((k ^ ((k >> 24) & mask)) * m) & mask
            h = ((h * m) & mask) ^ k
        if extra:
            tail = int.from_bytes(lanes.pack(*ints[words::per_key]), "little")
            h = ((h ^ tail) * m) & mask
        h ^= (h >> 13) & mask
        h = (h * m) & mask
        h ^= (h >> 15) & mask
        for i, value in zip(where, lanes.unpack(h.to_bytes(8 * n, "little")), strict=True):
            out[i] = value
    return out


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions` (numbered 0..n-1)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_for(keys: list[bytes], partitions: int) -> list[int]:
    """`partition_for` of every key."""
    return [(h & 0x7FFFFFFF) % partitions for h in murmur2_many(keys)]
