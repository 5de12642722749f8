"""Reports planned, queued and encoded for a whole call give what they gave message by message."""

import random
from itertools import product

import orjson
from hypothesis import given
from hypothesis import strategies as st
from mitto_sim.domain import (
    ALT_SPELLING,
    DELIVERED,
    DUPLICATE,
    FAILURE,
    SENT,
    MessageIds,
    ReportShares,
    plan_many,
    plan_reports,
    report_payload,
    reports_body,
)
from mitto_sim.pending import MAX_RUN, ReportQueue

IDS = MessageIds(start_ms=1_765_000_000_000, nonce=3)
STAMP = "2025-12-11T08:50:10.414Z"


def every_report(queue: ReportQueue) -> list[tuple[int, int]]:
    spans = queue.take(float("inf"), 10**9)
    return [(c, code) for counter, code, count in spans for c in range(counter, counter + count)]


# (jitter ms, failure, duplicate, sent first, out of order, alternative spelling)
SHARE_SETS = [
    ReportShares(1000, *values)
    for values in [
        (0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (3000, 0.0, 0.0, 0.0, 0.0, 0.0),
        (0, 0.2, 0.0, 0.0, 0.0, 0.0),
        (50, 0.3, 0.0, 0.0, 0.0, 0.0),
        (50, 0.3, 0.2, 0.3, 0.1, 0.5),
        (0, 0.0, 0.0, 0.0, 0.0, 0.5),
    ]
]


def test_a_plan_for_many_messages_draws_as_message_by_message() -> None:
    for shares in SHARE_SETS:
        one, many = random.Random(5), random.Random(5)
        expected = [(at, i, code) for i in range(300) for at, code in plan_reports(one.random, shares)]
        assert plan_many(many.random, shares, 300) == expected
        assert one.random() == many.random()


def test_planned_reports_come_out_as_pushed_one_by_one() -> None:
    for shares in SHARE_SETS:
        plan = plan_many(random.Random(9).random, shares, 2_000)
        one_by_one, planned = ReportQueue(), ReportQueue()
        for at, index, code in plan:
            one_by_one.push(70 + at, 500 + index, code)
        planned.push_planned(70, 500, plan)
        assert len(planned) == len(one_by_one) == len(plan)
        assert planned.next_due_ms() == one_by_one.next_due_ms()
        assert every_report(planned) == every_report(one_by_one)


def test_a_long_plain_plan_is_split_into_runs() -> None:
    queue = ReportQueue()
    queue.push_planned(0, 0, [(10, i, DELIVERED) for i in range(MAX_RUN + 3)])
    assert sum(map(len, queue._buckets.values())) == 2
    assert queue.take(10, 10**6) == [(0, DELIVERED, MAX_RUN), (MAX_RUN, DELIVERED, 3)]


CODES = [s | f for s, f in product((SENT, DELIVERED, FAILURE), (0, ALT_SPELLING, DUPLICATE))]
spans = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2**40 - 3000), st.sampled_from(CODES), st.integers(1, 2100)),
    min_size=1,
    max_size=6,
)


@given(spans, st.booleans())
def test_a_body_is_orjson_of_the_report_payloads(batch: list[tuple[int, int, int]], single: bool) -> None:
    reports = [
        report_payload(IDS.encode(c), code, STAMP)
        for counter, code, count in batch
        for c in range(counter, counter + count)
    ]
    expected = orjson.dumps(reports[0] if single and len(reports) == 1 else reports)
    assert reports_body(batch, IDS, STAMP, single) == expected


def test_a_lone_report_is_a_bare_object_only_when_asked() -> None:
    assert orjson.loads(reports_body([(4, FAILURE, 1)], IDS, STAMP, True))["error"] == "Undeliverable"
    assert isinstance(orjson.loads(reports_body([(4, FAILURE, 1)], IDS, STAMP, False)), list)
    assert isinstance(orjson.loads(reports_body([(4, FAILURE, 2)], IDS, STAMP, True)), list)
