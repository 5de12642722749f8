"""The message-rate bucket as arithmetic on a clock passed in: no sleeping, no timing."""

import pytest
from sender.limits import MessageRate


def test_no_limit_never_waits() -> None:
    rate = MessageRate(0)
    assert [rate.reserve(5000, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    rate = MessageRate(100, burst_seconds=1.0)  # holds 100 messages
    assert [rate.reserve(25, 0.0) for _ in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert rate.reserve(25, 0.0) == pytest.approx(0.25)
    assert rate.reserve(25, 0.0) == pytest.approx(0.5)


def test_a_call_bigger_than_the_bucket_waits_for_a_full_one_and_the_next_pays_its_debt() -> None:
    rate = MessageRate(1000, burst_seconds=0.1)  # holds 100
    assert rate.reserve(500, 10.0) == 0.0
    assert rate.reserve(500, 10.0) == pytest.approx(0.5)
    assert rate.reserve(500, 10.2) == pytest.approx(0.8)


def test_idle_time_refills_the_bucket_but_not_beyond_its_size() -> None:
    rate = MessageRate(10, burst_seconds=1.0)  # holds 10
    assert rate.reserve(10, 0.0) == 0.0
    assert rate.reserve(10, 100.0) == 0.0  # long idle: full again, not 1,000 messages of credit
    assert rate.reserve(10, 100.0) == pytest.approx(1.0)


def test_the_long_run_rate_holds_whatever_the_call_size() -> None:
    rate = MessageRate(2000, burst_seconds=0.5)
    start = 0.0
    for _ in range(40):
        start += rate.reserve(5000, start)
    assert start == pytest.approx(39 * 5000 / 2000)  # the 40th call starts after 39 calls' worth


def test_an_unused_booking_is_given_back() -> None:
    rate = MessageRate(100, burst_seconds=1.0)
    assert rate.reserve(100, 0.0) == 0.0
    assert rate.reserve(100, 0.0) == pytest.approx(1.0)
    rate.refund(100)
    assert rate.reserve(100, 0.0) == pytest.approx(1.0)
