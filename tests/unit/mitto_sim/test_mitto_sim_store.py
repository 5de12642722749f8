import pytest
from mitto_sim.columns import BLOB_CHUNK, CHUNK, Blob, Column
from mitto_sim.domain import DELIVERED, FAILURE, SENT, campaign_of
from mitto_sim.store import MessageStore, NewMessages


def a_batch(destinations: list[int], references: list[str | None], text: str = "Hi") -> NewMessages:
    n = len(destinations)
    return NewMessages(["acc"] * n, destinations, [text] * n, ["Shop"] * n, references, [1] * n)


def test_stored_messages_read_back_whole() -> None:
    store = MessageStore(base=10)
    first = store.add(a_batch([306900000001, 306900000002], ["c1:r1", None], text="Καλημέρα 😀"), now_ms=5)
    assert first == 10
    message = store.get(11)
    assert message is not None
    assert (message.destination, message.text, message.reference, message.status) == (
        "+306900000002",
        "Καλημέρα 😀",
        None,
        SENT,
    )
    assert store.get(12) is None
    assert store.get(9) is None


def test_sends_are_counted_per_campaign_and_phone() -> None:
    store = MessageStore()
    store.add(a_batch([1, 2, 1], ["c1:a", "c1:b", "c1:c"]), now_ms=0)
    store.add(a_batch([1, 3], ["c1:a", "c2:x"]), now_ms=0)
    summary = store.sends_of("c1")
    assert (summary.phones, summary.sends, summary.max_per_phone) == (2, 4, 3)
    assert summary.duplicates == [("+1", 3)]
    assert store.send_count("c2", 3) == 1
    assert store.send_count("c2", 1) == 0
    assert store.sends_of("nobody").sends == 0


def test_a_message_becomes_final_once() -> None:
    store = MessageStore()
    store.add(a_batch([1], [None]), now_ms=0)
    assert store.finalise([0], [1], FAILURE, now_ms=9) == 1
    assert store.finalise([0], [1], DELIVERED, now_ms=10) == 0
    message = store.get(0)
    assert message is not None
    assert (message.status, message.updated_ms) == (FAILURE, 9)


def test_columns_span_chunks() -> None:
    column = Column("q")
    column.extend(list(range(CHUNK - 3)))
    column.extend(list(range(10)))
    assert len(column) == CHUNK + 7
    assert column[CHUNK - 4] == CHUNK - 4
    assert column[CHUNK + 6] == 9


def test_blob_keeps_long_strings_and_batches_whole() -> None:
    blob = Blob()
    small = blob.add(b"abc")
    big = blob.add(b"x" * (BLOB_CHUNK + 5))
    handles = blob.add_all([b"one", b"", b"three"])
    assert blob.get(small, 3) == b"abc"
    assert blob.get(big, BLOB_CHUNK + 5) == b"x" * (BLOB_CHUNK + 5)
    assert [blob.get(h, n) for h, n in zip(handles, (3, 0, 5), strict=True)] == [b"one", b"", b"three"]


def test_sealed_blob_chunks_are_compressed_and_read_back_in_any_order() -> None:
    blob = Blob()
    texts = [f"Hi Guest{i}, 20% off!\nhttp://127.0.0.1/l/{i * 7919:028d}".encode() for i in range(60_000)]
    handles = [blob.add(t) for t in texts]
    assert len(blob._chunks) >= 3
    assert all(isinstance(c, bytes) and len(c) < BLOB_CHUNK // 2 for c in blob._chunks[:-1])
    for i in [59_999, 0, 31_000, 1, 45_000, 2]:  # across sealed and open chunks, back and forth
        assert blob.get(handles[i], len(texts[i])) == texts[i]


def test_strings_added_together_fill_chunks_and_read_back() -> None:
    blob = Blob()
    blob.add(b"x" * (BLOB_CHUNK - 100))
    raws = [f"text {i} ".encode() * (i % 7) for i in range(5_000)] + [b"y" * (BLOB_CHUNK + 1), b"z"]
    handles = blob.add_all(raws)
    assert len(blob._chunks) >= 3
    assert [blob.get(h, len(r)) for h, r in zip(handles, raws, strict=True)] == raws


def test_a_text_repeated_in_a_call_reads_back_for_every_message() -> None:
    store = MessageStore()
    texts = ["Same for all", "Other", "Same for all", "Same for all"]
    batch = NewMessages(
        ["a", "b", "a", "a"], [1, 2, 3, 4], texts, ["S"] * 4, ["c:1", None, "c:3", "d"], [1] * 4
    )
    store.add(batch, now_ms=0)
    read = [store.get(i) for i in range(4)]
    assert [m.text for m in read if m] == texts
    assert [m.reference for m in read if m] == ["c:1", None, "c:3", "d"]
    assert [m.traffic_account_id for m in read if m] == ["a", "b", "a", "a"]
    assert (store.send_count("c", 1), store.send_count("-", 2), store.send_count("d", 4)) == (1, 1, 1)


def test_runs_of_reports_finalise_only_known_messages_still_sent() -> None:
    store = MessageStore(base=100)
    n = CHUNK + 50
    store.add(NewMessages(["a"] * n, list(range(n)), ["t"] * n, ["S"] * n, [None] * n, [1] * n), now_ms=0)
    assert store.finalise([110], [1], FAILURE, now_ms=5) == 1
    assert store.finalise([90], [CHUNK + 30], DELIVERED, now_ms=7) == CHUNK + 30 - 10 - 1
    assert store.finalise([100 + n - 5, 100 + n, 99], [10, 3, 1], DELIVERED, now_ms=8) == 5
    assert store.finalise([110, 100 + n - 6, 100 + n - 6, 99, 100 + n], [1] * 5, DELIVERED, now_ms=9) == 1
    statuses = [(m.status, m.updated_ms) for m in map(store.get, range(100, 100 + n)) if m]
    assert statuses[10] == (FAILURE, 5)
    assert statuses[:2] == [(DELIVERED, 7), (DELIVERED, 7)]
    assert statuses[CHUNK + 19] == (DELIVERED, 7)
    assert statuses[CHUNK + 20] == (SENT, 0)
    assert statuses[-1] == (DELIVERED, 8)
    assert statuses[-6] == (DELIVERED, 9)


@pytest.mark.parametrize(
    "references",
    [
        ["c1:a", "c1:b", "c1:c"],
        ["c1:a", "c1:b", "c10:c"],
        ["c1", "c1", "c1"],
        ["c1:a", "c1:b\nc1:x", "c2:c"],
        ["c1:a\nc1:b", "c1:c"],
        ["c1:a", None, "c1:c"],
        ["Καλημέρα:1", "Καλημέρα:2", "c1:ü"],
    ],
)
def test_each_message_counts_for_the_campaign_of_its_reference(references: list[str | None]) -> None:
    store = MessageStore()
    n = len(references)
    store.add(NewMessages(["a"] * n, list(range(n)), ["t"] * n, ["S"] * n, references, [1] * n), now_ms=0)
    for digits, reference in enumerate(references):
        assert store.send_count(campaign_of(reference), digits) == 1
        message = store.get(digits)
        assert message is not None
        assert message.reference == reference
