"""A consumed poll is applied in slices bounded by raw size, in log order, none empty."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from shared.broker import byte_slices, in_topic_order, next_positions


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None


def recs(sizes: list[int]) -> list[Rec]:
    return [Rec("t", i % 2, i // 2, b"x" * n if n else None) for i, n in enumerate(sizes)]


def test_records_are_cut_where_the_next_one_would_pass_the_limit() -> None:
    slices = byte_slices(recs([4, 4, 4, 9, 1]), 8)
    assert [[len(r.value or b"") for r in s] for s in slices] == [[4, 4], [4], [9], [1]]


def test_a_poll_under_the_limit_is_one_slice_and_an_empty_poll_none() -> None:
    assert len(byte_slices(recs([1, 2, 3]), 100)) == 1
    assert byte_slices([], 100) == []


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 120))
def test_slices_keep_every_record_once_in_order_and_within_the_limit(sizes: list[int], limit: int) -> None:
    records = recs(sizes)
    slices = byte_slices(records, limit)
    assert [r for s in slices for r in s] == records
    for s in slices:
        assert s
        assert len(s) == 1 or sum(len(r.value or b"") for r in s) <= limit
    # Each slice's positions only move forward from the previous slice's.
    seen: dict[tuple[str, int], int] = {}
    for s in slices:
        for key, pos in next_positions(s).items():
            assert pos > seen.get(key, 0)
            seen[key] = pos


@given(
    st.lists(
        st.tuples(st.sampled_from(["facts", "sends", "reports", "other"]), st.integers(0, 2)), max_size=60
    )
)
def test_ranked_topics_come_first_and_every_partition_keeps_its_order(picks: list[tuple[str, int]]) -> None:
    records = [Rec(topic, partition, i, b"x") for i, (topic, partition) in enumerate(picks)]
    ordered = in_topic_order(records, {"facts": 0, "sends": 1, "reports": 2})
    assert sorted(ordered, key=lambda r: r.offset) == records
    ranks = [{"facts": 0, "sends": 1, "reports": 2}.get(r.topic, 3) for r in ordered]
    assert ranks == sorted(ranks)
    for key in {(r.topic, r.partition) for r in records}:
        offsets = [r.offset for r in ordered if (r.topic, r.partition) == key]
        assert offsets == sorted(offsets)
