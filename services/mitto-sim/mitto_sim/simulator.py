"""The state of one simulator instance and the operations the HTTP routes call.

Built by `create_app`; nothing here is global, so a test can run several simulators in one process.
"""

import hmac
import random
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

from mitto_sim.dlr import DlrDispatcher, iso_ms
from mitto_sim.domain import STATUS_NAMES, Fault, MessageIds, choose_fault, parse_e164, rejection_modulus
from mitto_sim.intake import Results, judge_items
from mitto_sim.metrics import SimMetrics
from mitto_sim.settings import SimConfig, SimSettings, merge_config
from mitto_sim.store import MessageStore, SendsSummary


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class SendStats:
    requests: int = 0
    lookups: int = 0
    items_accepted: int = 0
    items_rejected: int = 0
    injected_429: int = 0
    injected_500: int = 0
    injected_timeouts: int = 0

    def clear(self) -> None:
        for field in fields(self):
            setattr(self, field.name, 0)


class Simulator:
    def __init__(self, settings: SimSettings, nonce: int | None = None) -> None:
        self.settings = settings
        self.config: SimConfig = settings.runtime()
        self.rng = random.Random(settings.seed)
        self.ids = MessageIds(wall_ms(), secrets.randbits(40) if nonce is None else nonce)
        self.metrics = SimMetrics()
        self.store = MessageStore()
        self.stats = SendStats()
        self.dlr = DlrDispatcher(lambda: self.config, self.ids, self._finalise, self.rng.random, self.metrics)
        self.metrics.watch(lambda: self.dlr.pending, lambda: len(self.store))

    def _finalise(self, counters: list[int], counts: list[int], status: int, now_ms: int) -> int:
        # Through self.store on every call: reset replaces the store.
        return self.store.finalise(counters, counts, status, now_ms)

    def authorised(self, api_key: str | None) -> bool:
        expected = self.settings.api_key
        if expected is None:
            return True
        return api_key is not None and hmac.compare_digest(api_key.encode(), expected.encode())

    def choose_fault(self, config: SimConfig) -> Fault:
        """Draw the fault of one send call and count it."""
        self.stats.requests += 1
        if not (config.http_429_share or config.http_500_share or config.timeout_share):
            return Fault.NONE
        fault = choose_fault(
            self.rng.random(), config.http_429_share, config.http_500_share, config.timeout_share
        )
        if fault is Fault.HTTP_429:
            self.stats.injected_429 += 1
        elif fault is Fault.HTTP_500:
            self.stats.injected_500 += 1
        elif fault is Fault.TIMEOUT:
            self.stats.injected_timeouts += 1
        if fault is not Fault.NONE:
            self.metrics.faults.labels(fault.value).inc()
        return fault

    def accept(self, items: list[Any], config: SimConfig) -> Results:
        """Judge, store and schedule reports for one call; results in request order.

        Raises MalformedRequest before storing anything. Synchronous on purpose: no other call may take
        message counters between judging and storing.
        """
        store = self.store
        results, batch = judge_items(
            items, rejection_modulus(config.reject_share), store.next_counter, self.ids
        )
        accepted = len(batch.destinations)
        if accepted:
            first = store.add(batch, wall_ms())
            if config.webhook_url:
                self.dlr.schedule(first, accepted)
        rejected = len(results) - accepted
        self.stats.items_accepted += accepted
        self.stats.items_rejected += rejected
        self.metrics.items_accepted.inc(accepted)
        self.metrics.items_rejected.inc(rejected)
        return results

    def lookup(self, message_id: str) -> dict[str, Any] | None:
        self.stats.lookups += 1
        counter = self.ids.decode(message_id)
        message = None if counter is None else self.store.get(counter)
        if message is None:
            return None
        return {
            "messageId": message_id,
            "text": message.text,
            "sender": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, message.sender)), "name": message.sender},
            "deliveryStatus": STATUS_NAMES[message.status],
            "messageParts": message.parts,
            "createdAt": iso_ms(message.created_ms),
            "updatedAt": iso_ms(message.updated_ms),
            "trafficAccountId": message.traffic_account_id,
            "reference": message.reference,
            "destination": message.destination,
        }

    def update_config(self, patch: Any) -> SimConfig:
        self.config = merge_config(self.config, patch)
        self.dlr.wake()
        return self.config

    def reset(self) -> None:
        """Forget messages, sends, counters and pending reports; keep the config; replay the same draws."""
        self.store = MessageStore(base=self.store.next_counter)
        self.stats.clear()
        self.dlr.clear()
        self.rng.seed(self.settings.seed)

    def sends_of(self, campaign: str) -> SendsSummary:
        return self.store.sends_of(campaign)

    def send_count(self, campaign: str, phone: str) -> int:
        digits = parse_e164(phone if phone.startswith("+") else f"+{phone}")
        return 0 if digits is None else self.store.send_count(campaign, digits)

    def stats_view(self) -> dict[str, int]:
        reports = self.dlr.counters
        return {
            **asdict(self.stats),
            "messages_stored": len(self.store),
            "reports_delivered": reports.delivered,
            "reports_failed": reports.failed,
            "reports_sent": reports.sent,
            "reports_pending": self.dlr.pending,
            "duplicate_reports_sent": reports.duplicates_sent,
            "callback_errors": reports.callback_errors,
            "callbacks_ok": reports.callbacks_ok,
        }
