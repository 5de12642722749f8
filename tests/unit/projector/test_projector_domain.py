"""The projector's pure rules: report merging, send results, counter transitions, the stats' meanings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from projector.domain import (
    BatchDelta,
    CampaignDelta,
    DeliveryState,
    campaign_status_alias,
    fold_reports,
    merge_delivery,
    progress_percent,
    send_result_applies,
    stats,
)

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def report(status: str, raw: str | None = None, at: int | None = 0) -> DeliveryState:
    provider_time = T0 + timedelta(seconds=at) if at is not None else None
    return DeliveryState(status, raw or status.title(), None, provider_time, T0)


def a_campaign(**counts: int) -> dict[str, int]:
    row = dict.fromkeys(
        ("total", "accepted", "rejected", "delivered", "delivery_failed", "processing", "ambiguous"), 0
    )
    row.update(clicked=0, clicks=0, unsubscribed=0)
    row.update(counts)
    return row


def test_a_final_report_absorbs_every_later_one() -> None:
    delivered = report("delivered", at=5)
    assert merge_delivery(delivered, report("sent", at=9)) == delivered
    assert merge_delivery(delivered, report("failed", "Failure", at=9)) == delivered


def test_a_final_report_replaces_a_newer_non_final_one() -> None:
    assert merge_delivery(report("sent", at=9), report("failed", "Failure", at=1)).status == "failed"


def test_an_older_non_final_report_never_overwrites_a_newer_one() -> None:
    newer = report("unknown", "Pending", at=9)
    assert merge_delivery(newer, report("sent", at=3)) == newer
    assert merge_delivery(report("sent", at=3), newer) == newer


def test_without_provider_times_the_later_report_wins() -> None:
    assert (
        merge_delivery(report("sent", at=None), report("unknown", "Pending", at=None)).raw_status == "Pending"
    )


def test_a_first_report_is_taken_as_it_is() -> None:
    r = report("unknown", "EnRoute")
    assert merge_delivery(None, r) == r


def test_fold_merges_in_log_order_from_the_stored_state() -> None:
    stored = report("sent", at=5)
    assert fold_reports(stored, [report("unknown", "Pending", at=None), report("sent", at=4)]) == report(
        "sent", at=4
    )
    assert fold_reports(None, []) is None
    assert fold_reports(stored, []) == stored


@pytest.mark.parametrize(
    ("previous", "new", "applies"),
    [
        (None, "accepted", True),
        (None, "rejected", True),
        ("accepted", "rejected", False),
        ("accepted", "accepted", False),
        ("rejected", "accepted", True),  # a retry-failed run reached Mitto
        ("rejected", "rejected", True),
        ("ambiguous", "accepted", True),  # resolved
        ("ambiguous", "rejected", True),
        ("ambiguous", "ambiguous", False),
    ],
)
def test_which_send_result_may_replace_the_recorded_one(
    previous: str | None, new: str, applies: bool
) -> None:
    assert send_result_applies(previous, new) is applies


@pytest.mark.parametrize(
    ("previous", "new", "same_batch", "applies"),
    [
        (None, "accepted", True, True),
        ("ambiguous", "accepted", True, True),  # its own batch's hand-over
        ("ambiguous", "rejected", True, True),
        ("rejected", "rejected", True, False),  # the same step read again
        ("rejected", "accepted", False, False),  # a later run retried the recipient: its result stays
        ("rejected", "rejected", False, False),
        ("ambiguous", "accepted", False, False),  # another batch's hand-over is not this one's to settle
    ],
)
def test_a_resolution_settles_only_its_own_batchs_hand_over(
    previous: str | None, new: str, same_batch: bool, applies: bool
) -> None:
    assert send_result_applies(previous, new, resolution=True, same_batch=same_batch) is applies


def test_counters_move_by_transitions_and_cancel_out() -> None:
    d = CampaignDelta()
    d.send_status("ambiguous", +1)
    d.send_status("ambiguous", -1)
    d.send_status("accepted", +1)
    d.delivery_change("sent", "Sent", +1)
    d.delivery_change("sent", "Sent", -1)
    d.delivery_change("delivered", "Delivered", +1)
    assert (d.accepted, d.ambiguous, d.delivered, d.delivery_failed) == (1, 0, 1, 0)
    assert d.breakdown == {"Sent": 0, "Delivered": 1}
    assert not d.is_empty()
    empty = CampaignDelta()
    empty.delivery_change("failed", "Failure", 2)
    empty.delivery_change("failed", "Failure", -2)
    assert empty.is_empty()


def test_a_batch_counts_its_accepted_and_finally_reported_messages() -> None:
    b = BatchDelta()
    b.send_status("accepted", 3)
    b.delivery_change("delivered", 2)
    b.delivery_change("failed", 1)
    b.delivery_change("unknown", 1)
    assert (b.accepted, b.delivered, b.delivery_failed) == (3, 2, 1)


def test_stats_keep_one_meaning_per_count() -> None:
    s = stats(a_campaign(total=10, accepted=8, rejected=1, delivered=5, delivery_failed=2))
    assert s["sent"] == 6  # accepted and not reported failed
    assert s["failed"] == 3  # rejected at send, or reported failed
    assert s["processed"] == 9
    assert s["pendingDelivery"] == 1  # the seed's own example: accepted 8, delivered 5, failed 2
    assert s["queued"] == 1
    assert s["deliveryFailed"] == 2


def test_queued_is_what_no_outcome_reached_yet() -> None:
    s = stats(a_campaign(total=100, accepted=10, processing=20, ambiguous=5))
    assert s["queued"] == 65
    assert progress_percent(s) == 10.0


def test_total_never_undercounts_what_was_seen() -> None:
    assert stats(a_campaign(total=0, accepted=3, rejected=1))["total"] == 4
    assert progress_percent(stats(a_campaign())) == 0.0


def test_shopifys_legacy_sent_status_reads_as_completed() -> None:
    assert campaign_status_alias("sent") == "completed"
    assert campaign_status_alias("sending") == "sending"
