"""Append-only columns in fixed-size chunks, for the message store.

One growing array is reallocated and copied as it grows; the freed copies fragment the C heap, which cost
about a third more RSS than the data itself at a million messages. Chunks are allocated once, at full size.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import cramjam

CHUNK_BITS = 16
CHUNK = 1 << CHUNK_BITS
MASK = CHUNK - 1
BLOB_CHUNK_BITS = 20
BLOB_CHUNK = 1 << BLOB_CHUNK_BITS


class Column:
    """Integers of one array typecode, indexed from 0."""

    def __init__(self, typecode: str) -> None:
        self._typecode = typecode
        self._zeros = bytes(CHUNK * array(typecode).itemsize)
        self._chunks: list[array[int]] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> int:
        return self._chunks[index >> CHUNK_BITS][index & MASK]

    def __setitem__(self, index: int, value: int) -> None:
        self._chunks[index >> CHUNK_BITS][index & MASK] = value

    def extend(self, values: Sequence[int]) -> None:
        done, total = 0, len(values)
        while done < total:
            pos = self._len & MASK
            if pos == 0:
                self._chunks.append(array(self._typecode, self._zeros))
            take = min(CHUNK - pos, total - done)
            self._chunks[-1][pos : pos + take] = array(self._typecode, values[done : done + take])
            done += take
            self._len += take

    def replace(self, start: int, stop: int, old: int, new: int, also: Column, also_value: int) -> int:
        """Set `new` where indexes `start .. stop - 1` hold `old`, and `also_value` in `also` (a column as
        long) at those indexes; returns how many. A chunk-long stretch all `old` is written in C."""
        done = 0
        while start < stop:
            index, pos = start >> CHUNK_BITS, start & MASK
            take = min(CHUNK - pos, stop - start)
            chunk, other = self._chunks[index], also._chunks[index]
            matching = chunk[pos : pos + take].count(old)
            if matching == take:
                chunk[pos : pos + take] = array(self._typecode, (new,)) * take
                other[pos : pos + take] = array(also._typecode, (also_value,)) * take
            elif matching:
                for i in range(pos, pos + take):
                    if chunk[i] == old:
                        chunk[i] = new
                        other[i] = also_value
            done += matching
            start += take
        return done

    def replace_each(self, indexes: Sequence[int], old: int, new: int, also: Column, also_value: int) -> int:
        """`replace` at each of `indexes` (all below the length)."""
        chunks, others, done = self._chunks, also._chunks, 0
        for index in indexes:
            chunk, pos = chunks[index >> CHUNK_BITS], index & MASK
            if chunk[pos] == old:
                chunk[pos] = new
                others[index >> CHUNK_BITS][pos] = also_value
                done += 1
        return done

    def chunks(self) -> list[array[int]]:
        """The values in chunk-sized arrays (the last one cut to the length): scans run in C over them."""
        if not self._chunks:
            return []
        last = self._len - (len(self._chunks) - 1) * CHUNK
        return [*self._chunks[:-1], self._chunks[-1][:last]]

    def extend_constant(self, value: int, count: int) -> None:
        self.extend(array(self._typecode, (value,)) * count)


class Blob:
    """Byte strings appended one by one; `add` returns a handle for `get`. No string spans two chunks.

    A full chunk is compressed (zstd level 1: ~3 ms per chunk, zlib took ~17) when the next one starts: a
    million personalised texts share their template and differ in a name and two link tokens, so they
    shrink to less than a third (~100 MB less per million messages). Reads of a sealed chunk (status
    lookups: rare) decompress it, keeping the last one read."""

    def __init__(self) -> None:
        self._chunks: list[bytearray | bytes] = []  # the last one open (bytearray), the others compressed
        self._pos = 0
        self._read_index = -1
        self._read_chunk = b""

    def add(self, raw: bytes | memoryview) -> int:
        size = len(raw)
        if not self._chunks or self._pos + size > BLOB_CHUNK:
            if self._chunks:
                sealed = memoryview(self._chunks[-1])[: self._pos]
                self._chunks[-1] = bytes(cramjam.zstd.compress(sealed, level=1))
            # A string longer than a chunk gets a chunk of its own size.
            self._chunks.append(bytearray(max(BLOB_CHUNK, size)))
            self._pos = 0
        handle = (len(self._chunks) - 1) << BLOB_CHUNK_BITS | self._pos
        self._chunks[-1][self._pos : self._pos + size] = raw  # type: ignore[index]
        self._pos += size
        return handle

    def add_all(self, raws: Sequence[bytes]) -> list[int]:
        """`add` of each string, copied in one piece per chunk they fill."""
        return self.add_joined(b"".join(raws), list(map(len, raws)))

    def add_joined(self, data: bytes, lengths: Sequence[int]) -> list[int]:
        """`add_all` of the strings `data` holds one after another, `lengths` long."""
        handles: list[int] = []
        view = memoryview(data)
        ends = list(accumulate(lengths))
        start, done = 0, 0  # first string not yet added, and the bytes before it
        while start < len(lengths):
            room = BLOB_CHUNK - self._pos if self._chunks else 0
            stop = bisect_right(ends, done + room, lo=start)
            if stop == start:
                # The next string does not fit: `add` starts a chunk for it.
                handles.append(self.add(view[done : ends[start]]))
                stop = start + 1
            else:
                # A handle plus an offset inside its chunk is a handle.
                first = self.add(view[done : ends[stop - 1]])
                handles += accumulate(lengths[start : stop - 1], initial=first)
            start, done = stop, ends[stop - 1]
        return handles

    def get(self, handle: int, size: int) -> bytes:
        start, index = handle & (BLOB_CHUNK - 1), handle >> BLOB_CHUNK_BITS
        return bytes(self._chunk(index)[start : start + size])

    def _chunk(self, index: int) -> bytes | bytearray:
        chunk = self._chunks[index]
        if index == len(self._chunks) - 1:
            return chunk
        if index != self._read_index:
            self._read_index, self._read_chunk = index, bytes(cramjam.zstd.decompress(chunk))
        return self._read_chunk
