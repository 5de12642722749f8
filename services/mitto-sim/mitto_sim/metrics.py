"""Prometheus metrics of one simulator instance, in a registry the app owns (tests build many apps)."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from mitto_sim.domain import STATUS_NAMES


class SimMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mitto_sim_requests",
            "Send calls by endpoint and answer",
            ["endpoint", "status"],
            registry=self.registry,
        )
        items = Counter("mitto_sim_items", "Send items by outcome", ["outcome"], registry=self.registry)
        self.items_accepted = items.labels("accepted")
        self.items_rejected = items.labels("rejected")
        self.faults = Counter("mitto_sim_faults", "Injected faults by kind", ["kind"], registry=self.registry)
        reports = Counter(
            "mitto_sim_reports_acknowledged",
            "Delivery reports answered 2xx by the webhook, duplicates included",
            ["status"],
            registry=self.registry,
        )
        self._reports = [reports.labels(name) for name in STATUS_NAMES]
        self.duplicates = Counter(
            "mitto_sim_report_duplicates", "Duplicate reports acknowledged", registry=self.registry
        )
        self.callback_errors = Counter(
            "mitto_sim_callback_errors", "Report batches not answered 2xx", registry=self.registry
        )
        self.pending = Gauge(
            "mitto_sim_reports_pending", "Reports queued or in flight", registry=self.registry
        )
        self.stored = Gauge("mitto_sim_messages_stored", "Messages in the store", registry=self.registry)

    def watch(self, pending: Callable[[], int], stored: Callable[[], int]) -> None:
        self.pending.set_function(pending)
        self.stored.set_function(stored)

    def reports_acknowledged(self, by_status: list[int], duplicates: int) -> None:
        """Count acknowledged reports: `by_status[code & STATUS_MASK]` of each status, duplicates included."""
        for counter, count in zip(self._reports, by_status, strict=True):
            if count:
                counter.inc(count)
        if duplicates:
            self.duplicates.inc(duplicates)
