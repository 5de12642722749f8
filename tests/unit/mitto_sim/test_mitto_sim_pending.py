from mitto_sim.pending import MAX_RUN, ReportQueue


def test_reports_come_out_by_due_time_then_counter_then_code() -> None:
    queue = ReportQueue()
    queue.push(200, 7, 1)
    queue.push(100, 9, 1)
    queue.push(100, 9, 0)
    queue.push(100, 8, 2)
    assert queue.next_due_ms() == 100
    assert queue.take(1000, 10) == [(8, 2, 1), (9, 0, 1), (9, 1, 1), (7, 1, 1)]
    assert len(queue) == 0


def test_only_due_reports_are_taken() -> None:
    queue = ReportQueue()
    queue.push(100, 1, 1)
    queue.push(300, 2, 1)
    assert queue.take(200, 10) == [(1, 1, 1)]
    assert len(queue) == 1
    assert queue.take(float("inf"), 10) == [(2, 1, 1)]


def test_a_run_of_messages_is_one_entry_split_to_the_batch_size() -> None:
    queue = ReportQueue()
    queue.push(100, 1_000, 1, count=5_000)
    queue.push(100, 50_000, 1, count=MAX_RUN + 5)
    assert len(queue) == 5_000 + MAX_RUN + 5
    assert queue.take(100, 3_000) == [(1_000, 1, 3_000)]
    assert queue.take(100, 3_000) == [(4_000, 1, 2_000), (50_000, 1, 1_000)]
    rest = queue.take(100, 100_000)
    assert sum(count for _, _, count in rest) == MAX_RUN + 5 - 1_000
    assert rest[0] == (51_000, 1, MAX_RUN - 1_000)
    assert len(queue) == 0
