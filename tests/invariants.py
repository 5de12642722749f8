"""The invariants of the architecture guide, checked over a running LocalStack from the outside: the
simulator's records, each service's public (or operator) endpoints and, where no endpoint says enough, its
tables. Soak and chaos runs call them while traffic flows and once everything has settled.

Every check returns a `Row` (name, held, detail) and never raises on a violation, so a run can print the
whole table before it fails. `settled=False` checks only what holds at any instant (or converges within a
bounded lag: the read side follows the log); `settled=True` also compares the services with each other,
which is only meaningful once no event is in flight.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.local.stack import REPO, LocalStack
from shared.broker import end_offsets
from shared.topics import CONSUMERS, dead_letter_topic
from tests.support import eventually

# Every consumer of the stack, by (schema, consumer name): the topics it must have read to the end.
STACK_CONSUMERS: dict[tuple[str, str], list[str]] = {
    ("enqueuer", "enqueuer"): ["sms.outcomes", "engagement.events"],
    ("sender", "sender"): ["sms.batches"],
    ("sender", "sender.control"): ["campaign.events"],
    ("dlr_ingest", "dlr-ingest"): ["tenant.events", "campaign.events", "sms.batches"],
    ("projector", "projector"): [
        "tenant.events",
        "campaign.events",
        "sms.batches",
        "sms.outcomes",
        "delivery.reports",
        "engagement.events",
    ],
}
OUTBOX_SCHEMAS = ("enqueuer", "sender", "dlr_ingest", "projector")
DEAD_LETTER_TOPICS = tuple(dead_letter_topic(c) for c in (*CONSUMERS, "sender.control"))
SIM_KEY = {"X-Mitto-API-Key": "local-sim-key"}
ORPHAN_SAMPLE = 50  # reports without a recipient whose origin is traced through the simulator


@dataclass(frozen=True)
class Row:
    name: str
    held: bool
    detail: str


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table (what `pytest -s` prints at the end of a run)."""
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt(cells: Sequence[str]) -> str:
        return "|".join(f" {c.ljust(w)} " for c, w in zip(cells, widths, strict=True))

    return "\n".join([f"\n{title}", line, fmt(list(header)), line, *(fmt(r) for r in body), line])


def invariant_table(title: str, rows: Sequence[Row]) -> str:
    return table(
        title, ("invariant", "held", "detail"), [(r.name, "yes" if r.held else "NO", r.detail) for r in rows]
    )


async def converge(
    check: Callable[[], Awaitable[Row]], *, timeout: float, every: float = 1.0, retry_errors: bool = True
) -> Row:
    """The first held row within `timeout`, else the last one seen: for checks of a side that lags behind
    the log (the read models) or of a service that is restarting. An exception counts as not held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            row = await check()
        except (OSError, httpx.HTTPError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not retry_errors:
                raise
            row = Row(getattr(check, "__name__", "check"), False, f"error: {type(exc).__name__}: {exc}")
        if row.held or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(every)


class Invariants:
    """Checks over one stack. Opens a database connection per check, so a restarted PostgreSQL between
    two checks costs nothing."""

    def __init__(self, stack: LocalStack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.operator = {"X-Api-Key": stack.operator_key}

    @asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.stack.database_url, timeout=10)
        try:
            yield conn
        finally:
            await conn.close()

    async def campaigns(self) -> list[str]:
        async with self.db() as conn:
            return [str(r["id"]) for r in await conn.fetch("SELECT id FROM enqueuer.campaigns ORDER BY 1")]

    async def sim_sends(self, campaigns: Sequence[str]) -> dict[str, dict[str, Any]]:
        sim = self.stack.url("mitto-sim")
        out: dict[str, dict[str, Any]] = {}
        for c in campaigns:
            r = await self.http.get(f"{sim}/sim/sends", params={"campaign": c})
            r.raise_for_status()
            out[c] = r.json()
        return out

    async def sim_stats(self) -> dict[str, Any]:
        r = await self.http.get(f"{self.stack.url('mitto-sim')}/sim/stats")
        r.raise_for_status()
        return dict(r.json())

    # --- 1. no double send ------------------------------------------------------------------------------

    async def no_double_send(self) -> Row:
        """Per (campaign, phone) the simulator stored at most one message; and what it stored lies between
        what the sender's ledger records as accepted and that plus what is (or was) ambiguous."""
        name = "per-phone sends <= 1"
        campaigns = await self.campaigns()
        sends = await self.sim_sends(campaigns)
        async with self.db() as conn:
            ledger = await _ledger_by_campaign(conn)
        worst = max((s["max_per_phone"] for s in sends.values()), default=0)
        doubled = {c: s["duplicates"][:3] for c, s in sends.items() if s["max_per_phone"] > 1}
        # Counted after the simulator, so the ledger may be ahead of it, never the other way round.
        outside = []
        for c, s in sends.items():
            led = ledger.get(c, Counter())
            if s["sends"] > led["accepted"] + led["ambiguous"] + led["abandoned"] + led["claimed"]:
                outside.append(f"{c[:8]}: sim {s['sends']} > ledger {dict(led)}")
        total = sum(s["sends"] for s in sends.values())
        detail = f"{len(campaigns)} campaigns, {total} messages stored, max per phone {worst}"
        if doubled:
            detail += f"; doubled: {doubled}"
        if outside:
            detail += f"; provider holds more than the ledger handed over: {outside[:3]}"
        return Row(name, worst <= 1 and not outside, detail)

    # --- 2. every acknowledged report is projected ------------------------------------------------------

    async def reports_projected(self, *, settled: bool, timeout: float = 90.0) -> Row:
        """The simulator counts a message as delivered/failed once the webhook answered 2xx to its final
        report (duplicates and `Sent` reports excluded); the projector keeps one row per message id in
        `deliveries`. While traffic flows the projector must reach the simulator's count of a moment
        ago; settled, both are equal. Reports of messages no recipient holds (an ambiguous batch that
        Mitto did store, failed by the operator) are kept but counted in no campaign: their number must
        be what the simulator stored beyond the projector's accepted recipients, and a sample of them is
        traced back through the simulator's `reference` to ambiguous or abandoned ledger rows."""
        name = "acknowledged reports projected"
        sim = await self.sim_stats()
        want = {"delivered": sim["reports_delivered"], "failed": sim["reports_failed"]}

        async def projector_has() -> Row:
            async with self.db() as conn:
                got = await _final_reports(conn)
            ok = all(got[k] == v if settled else got[k] >= v for k, v in want.items())
            return Row(name, ok, f"simulator acknowledged {want}, projector holds {dict(got)}")

        row = await converge(projector_has, timeout=timeout)
        if not settled or not row.held:
            return row
        if sim["reports_pending"]:
            return Row(name, False, f"{row.detail}; {sim['reports_pending']} reports still pending")
        campaigns = await self.campaigns()
        sends = await self.sim_sends(campaigns)
        async with self.db() as conn:
            counted = await conn.fetchrow(
                "SELECT coalesce(sum(delivered), 0) AS d, coalesce(sum(delivery_failed), 0) AS f,"
                " coalesce(sum(accepted), 0) AS a FROM projector.campaigns"
            )
            matched = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE d.status = 'delivered') AS d,
                          count(*) FILTER (WHERE d.status = 'failed') AS f
                   FROM projector.deliveries d JOIN projector.recipients r ON r.message_id = d.message_id
                   WHERE d.status IN ('delivered', 'failed') AND r.status = 'accepted'"""
            )
            orphans = await conn.fetch(
                """SELECT d.message_id FROM projector.deliveries d
                   WHERE d.status IN ('delivered', 'failed')
                     AND NOT EXISTS (SELECT 1 FROM projector.recipients r WHERE r.message_id = d.message_id)
                   ORDER BY d.message_id"""
            )
            assert counted is not None
            assert matched is not None
            stored = sum(s["sends"] for s in sends.values())
            problems = []
            if (counted["d"], counted["f"]) != (matched["d"], matched["f"]):
                problems.append(
                    f"campaign counters {counted['d']}/{counted['f']} != matched reports "
                    f"{matched['d']}/{matched['f']}"
                )
            if len(orphans) != stored - counted["a"]:
                problems.append(
                    f"{len(orphans)} reports without a recipient, but the simulator stored "
                    f"{stored - counted['a']} messages beyond the accepted recipients"
                )
            traced = await self._trace_orphans(conn, [r["message_id"] for r in orphans[:ORPHAN_SAMPLE]])
        if traced:
            problems.append(f"untraceable reports: {traced[:3]}")
        detail = (
            f"{row.detail}; in campaigns {counted['d']} delivered + {counted['f']} failed; "
            f"{len(orphans)} of messages held by no recipient (sampled {min(len(orphans), ORPHAN_SAMPLE)})"
        )
        return Row(name, not problems, detail + ("; " + "; ".join(problems) if problems else ""))

    async def _trace_orphans(self, conn: asyncpg.Connection, message_ids: Sequence[str]) -> list[str]:
        """Message ids whose origin is NOT an ambiguous or abandoned recipient of the sender's ledger."""
        bad = []
        sim = self.stack.url("mitto-sim")
        for mid in message_ids:
            r = await self.http.get(f"{sim}/api/v1.1/Messages/{mid}", headers=SIM_KEY)
            reference = r.json().get("reference") if r.status_code == 200 else None
            if not reference or ":" not in reference:
                bad.append(f"{mid}: no reference ({r.status_code})")
                continue
            campaign, recipient = reference.split(":", 1)
            status = await conn.fetchval(
                "SELECT status FROM sender.recipient_outcomes WHERE campaign_id = $1::uuid AND recipient_id = $2",
                campaign,
                int(recipient),
            )
            if status not in ("ambiguous", "abandoned"):
                bad.append(f"{mid}: recipient {reference} is {status}")
        return bad

    # --- 3. replay is exact -----------------------------------------------------------------------------

    async def replay_checksum(self) -> Row:
        """`python -m projector rebuild --dry-run`: replays the log from offset 0 into a fresh schema and
        compares checksums with the live read models at the same positions (taken under a lock, so the
        comparison is exact while traffic flows)."""
        name = "replay checksum = live"
        env = self.stack.environment("projector")
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projector",
            "rebuild",
            "--dry-run",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        seconds = time.monotonic() - started
        try:
            summary = orjson.loads(out)
            sums = summary["checksums"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            return Row(name, False, f"rebuild exited {proc.returncode}: {' / '.join(tail)}")
        differing = [t for t, v in sums["tables"].items() if v["live"] != v["rebuilt"]]
        detail = f"{summary['events']} events replayed in {seconds:.1f} s, digest {sums['live']}"
        if not sums["equal"]:
            detail = f"live {sums['live']} != rebuilt {sums['rebuilt']}, tables {differing}; " + detail
        return Row(name, proc.returncode == 0 and bool(sums["equal"]), detail)

    # --- 4. credits balance -----------------------------------------------------------------------------

    async def credits_balance(self, *, settled: bool) -> Row:
        """Read in one snapshot of the enqueuer's tables: every finished run has reserved = debited +
        released; no balance is negative; each tenant's balances are the sums of its ledger; what a tenant
        holds is what its open runs hold. Settled: no run holds credits any more, and each campaign was
        debited exactly the SMS parts of its accepted recipients (as the projector recorded them)."""
        name = "credits balance"
        problems: list[str] = []
        async with self.db() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            runs = await conn.fetch(
                """SELECT run_token, campaign_id, tenant_id, credits_reserved AS r, credits_debited AS d,
                          credits_released AS l, reservation_open AS open FROM enqueuer.runs"""
            )
            tenants = await conn.fetch(
                """SELECT t.id, t.credits_available AS available, t.credits_reserved AS reserved,
                          t.credits_spent AS spent,
                          coalesce(sum(l.credits) FILTER (WHERE l.kind = 'top_up'), 0) AS top_up,
                          coalesce(sum(l.credits) FILTER (WHERE l.kind = 'reserve'), 0) AS reserve,
                          coalesce(sum(l.credits) FILTER (WHERE l.kind = 'debit'), 0) AS debit,
                          coalesce(sum(l.credits) FILTER (WHERE l.kind = 'release'), 0) AS release
                   FROM enqueuer.tenants t LEFT JOIN enqueuer.credit_ledger l ON l.tenant_id = t.id
                   GROUP BY t.id"""
            )
            by_run = await conn.fetch(
                """SELECT run_token, kind, sum(credits) AS credits FROM enqueuer.credit_ledger
                   WHERE run_token IS NOT NULL GROUP BY 1, 2"""
            )
        ledger: dict[str, Counter[str]] = {}
        for e in by_run:
            ledger.setdefault(e["run_token"], Counter())[e["kind"]] += int(e["credits"])
        held_by_tenant: Counter[str] = Counter()
        finished = 0
        for run in runs:
            r, d, released = run["r"], run["d"], run["l"]
            if min(r, d, released) < 0 or d + released > r:
                problems.append(f"run {run['run_token']}: reserved {r} < debited {d} + released {released}")
            if run["open"]:
                held_by_tenant[str(run["tenant_id"])] += r - d - released
                if settled:
                    problems.append(f"run {run['run_token']} still holds {r - d - released} credits")
            else:
                finished += 1
                if r != d + released:
                    problems.append(
                        f"run {run['run_token']}: reserved {r} != debited {d} + released {released}"
                    )
            entries = ledger.get(run["run_token"], Counter())
            if (entries["reserve"], entries["debit"], entries["release"]) != (r, d, released):
                problems.append(f"run {run['run_token']}: ledger {dict(entries)} != run {r}/{d}/{released}")
        for t in tenants:
            tid = str(t["id"])
            if min(t["available"], t["reserved"], t["spent"]) < 0:
                problems.append(f"tenant {tid[:8]} has a negative balance")
            expected = (
                t["top_up"] - t["reserve"] + t["release"],
                t["reserve"] - t["debit"] - t["release"],
                t["debit"],
            )
            if (t["available"], t["reserved"], t["spent"]) != expected:
                problems.append(
                    f"tenant {tid[:8]}: balances {t['available']}/{t['reserved']}/{t['spent']} != ledger {expected}"
                )
            if t["reserved"] != held_by_tenant[tid]:
                problems.append(
                    f"tenant {tid[:8]}: reserved {t['reserved']} != open runs {held_by_tenant[tid]}"
                )
        if settled:
            problems += await self._debits_match_parts()
        spent = sum(int(t["spent"]) for t in tenants)
        detail = f"{len(tenants)} tenants, {len(runs)} runs ({finished} finished), {spent} credits spent"
        return Row(name, not problems, detail + ("; " + "; ".join(problems[:4]) if problems else ""))

    async def _debits_match_parts(self) -> list[str]:
        async with self.db() as conn:
            rows = await conn.fetch(
                """WITH debited AS (SELECT campaign_id, sum(credits_debited) AS d FROM enqueuer.runs GROUP BY 1),
                        parts AS (SELECT campaign_id, sum(parts) FILTER (WHERE status = 'accepted') AS p
                                  FROM projector.recipients GROUP BY 1)
                   SELECT d.campaign_id, d.d, coalesce(p.p, 0) AS p
                   FROM debited d LEFT JOIN parts p USING (campaign_id)
                   WHERE d.d <> coalesce(p.p, 0)"""
            )
        return [
            f"campaign {str(r['campaign_id'])[:8]}: debited {r['d']} != accepted parts {r['p']}" for r in rows
        ]

    # --- 5. counts add up -------------------------------------------------------------------------------

    async def counts_add_up(self, *, settled: bool, timeout: float = 60.0) -> Row:
        """Each campaign's status body: sent + failed + queued + processing + ambiguous = total and
        processed = sent + failed; in the stored counters (the body clamps `queued` at 0) nothing
        exceeds the total; no completed or failed campaign has a recipient still queued or ambiguous.
        Settled: the projector agrees with the enqueuer's recipient states and with the sender's ledger,
        campaign by campaign, statuses included."""
        name = "counts add up"
        problems: list[str] = []
        async with self.db() as conn:
            rows = await conn.fetch(
                """SELECT id::text AS id, status, total, accepted, rejected, delivered, delivery_failed,
                          processing, ambiguous FROM projector.campaigns"""
            )
            # A campaign becomes completed or failed in the same transaction that settles its last batch.
            unfinished = await conn.fetch(
                """SELECT c.id::text AS id, c.status, r.state, count(*) AS n
                   FROM enqueuer.campaigns c JOIN enqueuer.recipients r ON r.campaign_id = c.id
                   WHERE c.status IN ('completed', 'failed') AND r.state IN ('queued', 'ambiguous')
                   GROUP BY 1, 2, 3"""
            )
        problems += [
            f"{u['id'][:8]}: {u['status']} with {u['n']} recipients {u['state']}" for u in unfinished
        ]
        for c in rows:
            if c["accepted"] + c["rejected"] + c["processing"] + c["ambiguous"] > c["total"]:
                problems.append(f"{c['id'][:8]}: stored counters exceed total {dict(c)}")
            if c["delivered"] + c["delivery_failed"] > c["accepted"]:
                problems.append(f"{c['id'][:8]}: more final reports than accepted {dict(c)}")
            if min(c["accepted"], c["rejected"], c["processing"], c["ambiguous"], c["delivered"]) < 0:
                problems.append(f"{c['id'][:8]}: a negative counter {dict(c)}")
        bodies = 0
        for c in rows:
            r = await self.http.get(
                f"{self.stack.url('projector')}/api/campaigns/{c['id']}/status", headers=self.operator
            )
            if r.status_code != 200:
                problems.append(f"{c['id'][:8]}: status answered {r.status_code}")
                continue
            bodies += 1
            s = r.json()["stats"]
            parts = s["sent"] + s["failed"] + s["queued"] + s["processing"] + s["ambiguous"]
            if parts != s["total"] or s["processed"] != s["sent"] + s["failed"]:
                problems.append(f"{c['id'][:8]}: {s}")
        if settled and not problems:
            row = await converge(self._services_agree, timeout=timeout)
            if not row.held:
                problems.append(row.detail)
        detail = f"{len(rows)} campaigns in the read model, {bodies} status bodies"
        if settled and not problems:
            detail += "; projector = enqueuer = sender ledger per campaign"
        return Row(name, not problems, detail + ("; " + "; ".join(problems[:4]) if problems else ""))

    async def _services_agree(self) -> Row:
        async with self.db() as conn:
            projected = {
                r["id"]: r
                for r in await conn.fetch(
                    """SELECT id::text AS id, status, total, accepted, rejected, processing, ambiguous
                       FROM projector.campaigns"""
                )
            }
            states: dict[str, Counter[str]] = {}
            for r in await conn.fetch(
                "SELECT campaign_id::text AS c, state, count(*) AS n FROM enqueuer.recipients GROUP BY 1, 2"
            ):
                states.setdefault(r["c"], Counter())[r["state"]] = r["n"]
            statuses = {
                r["id"]: r["status"]
                for r in await conn.fetch("SELECT id::text AS id, status FROM enqueuer.campaigns")
            }
            ledger = await _ledger_by_campaign(conn)
        problems = []
        for cid, st in states.items():
            p = projected.get(cid)
            if p is None:
                problems.append(f"{cid[:8]}: not in the read model")
                continue
            led = ledger.get(cid, Counter())
            mine = (p["total"], p["accepted"], p["rejected"], p["ambiguous"], p["processing"])
            theirs = (sum(st.values()), st["sent"], st["failed"] + st["abandoned"], st["ambiguous"], 0)
            if mine != theirs:
                problems.append(f"{cid[:8]}: projector {mine} != enqueuer {theirs} (total/acc/rej/amb/proc)")
            if led["accepted"] != p["accepted"] or led["ambiguous"] != p["ambiguous"]:
                problems.append(
                    f"{cid[:8]}: ledger {dict(led)} != projector {p['accepted']}/{p['ambiguous']}"
                )
            if statuses.get(cid) in ("completed", "failed") and (st["queued"] or st["ambiguous"]):
                problems.append(f"{cid[:8]}: {statuses[cid]} with {dict(st)}")
            if statuses.get(cid) != p["status"]:
                problems.append(
                    f"{cid[:8]}: status {p['status']} in the read model, {statuses.get(cid)} in the enqueuer"
                )
        return Row("services agree", not problems, "; ".join(problems[:4]))

    # --- 6. dead letters --------------------------------------------------------------------------------

    async def dead_letters(self, allowed: Callable[[str], bool] | None = None) -> Row:
        """The dlq.* topics are empty, or every record in them carries a reason that `allowed` accepts."""
        name = "no dead letters"
        found = await read_dead_letters(self.stack.broker.bootstrap)
        if not found:
            return Row(name, True, f"{len(DEAD_LETTER_TOPICS)} dead-letter topics empty")
        reasons = Counter(f"{topic}: {reason[:120]}" for topic, reason in found)
        bad = [r for (_, r) in found if not r or (allowed is None or not allowed(r))]
        detail = f"{len(found)} dead letters: " + "; ".join(f"{n}x {r}" for r, n in reasons.most_common(4))
        return Row(name, not bad, detail)

    # --- ambiguous batches are listed -------------------------------------------------------------------

    async def ambiguous_listed(self, timeout: float = 30.0) -> Row:
        """The sender's operator endpoint lists exactly the ledger's ambiguous batches, with their
        recipients; the projector counts the same recipients as ambiguous (once caught up)."""

        async def check() -> Row:
            listed = await self.list_ambiguous()
            async with self.db() as conn:
                ledger = {
                    r["batch_id"]: r["remaining"]
                    for r in await conn.fetch(
                        "SELECT batch_id, remaining FROM sender.send_batches WHERE status = 'ambiguous'"
                    )
                }
                projected = await conn.fetchval("SELECT coalesce(sum(ambiguous), 0) FROM projector.campaigns")
            mine = {b["batchId"]: b["recipients"] for b in listed}
            recipients = sum(mine.values())
            ok = mine == ledger and projected == recipients
            detail = f"{len(mine)} batches, {recipients} recipients listed; ledger {len(ledger)} batches"
            detail += f", projector {projected} recipients"
            return Row("ambiguous batches listed", ok, detail)

        return await converge(check, timeout=timeout)

    async def list_ambiguous(self) -> list[dict[str, Any]]:
        url = f"{self.stack.url('sender')}/api/operator/ambiguous-batches"
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if after:
                params["after"] = after
            r = await self.http.get(url, params=params, headers=self.operator)
            r.raise_for_status()
            body = r.json()
            items += body["items"]
            after = body["next"]
            if not after:
                return items

    # --- all of them --------------------------------------------------------------------------------------

    async def check_all(
        self, *, settled: bool, allowed_dead_letters: Callable[[str], bool] | None = None
    ) -> list[Row]:
        rows: list[Row] = []
        for check in (
            self.no_double_send,
            lambda: self.reports_projected(settled=settled),
            self.replay_checksum,
            lambda: self.credits_balance(settled=settled),
            lambda: self.counts_add_up(settled=settled),
            lambda: self.dead_letters(allowed_dead_letters),
            self.ambiguous_listed,
        ):
            try:
                rows.append(await check())
            except Exception as exc:  # one broken check must not hide the others' rows
                rows.append(Row(getattr(check, "__name__", "check"), False, f"{type(exc).__name__}: {exc}"))
        return rows


async def _ledger_by_campaign(conn: asyncpg.Connection) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for r in await conn.fetch(
        "SELECT campaign_id::text AS c, status, count(*) AS n FROM sender.recipient_outcomes GROUP BY 1, 2"
    ):
        out.setdefault(r["c"], Counter())[r["status"]] = r["n"]
    return out


async def _final_reports(conn: asyncpg.Connection) -> Counter[str]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM projector.deliveries WHERE status IN ('delivered', 'failed') GROUP BY 1"
    )
    got: Counter[str] = Counter({"delivered": 0, "failed": 0})
    got.update({r["status"]: r["n"] for r in rows})
    return got


async def read_dead_letters(bootstrap: str) -> list[tuple[str, str]]:
    """(topic, reason) of every record in the dead-letter topics, read from the start without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[str, str]] = []
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in DEAD_LETTER_TOPICS
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = {tp: o for tp, o in (await consumer.end_offsets(tps)).items() if o > 0} if tps else {}
        if not ends:
            return out
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        remaining = set(ends)
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                for rec in recs:
                    headers = dict(rec.headers or ())
                    out.append((tp.topic, (headers.get("dlq-reason") or b"").decode(errors="replace")))
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


async def quiet(stack: LocalStack, *, timeout: float = 300.0) -> None:
    """Wait until nothing is in flight: every outbox empty, every consumer at the end of its topics and
    the simulator holding no report, twice in a row a second apart."""
    streak = 0

    async def settled() -> bool:
        nonlocal streak
        try:
            ok = await _outboxes_empty(stack) and await _caught_up(stack)
            if ok:
                async with httpx.AsyncClient(timeout=30) as http:
                    await http.post(f"{stack.url('mitto-sim')}/sim/flush-dlr")
                    stats = (await http.get(f"{stack.url('mitto-sim')}/sim/stats")).json()
                ok = stats["reports_pending"] == 0
        except (OSError, httpx.HTTPError, asyncpg.PostgresError, asyncpg.InterfaceError):
            ok = False
        streak = streak + 1 if ok else 0
        return streak >= 2

    await eventually(settled, timeout=timeout, every=1.0, what="the stack to go quiet")


async def _outboxes_empty(stack: LocalStack) -> bool:
    conn = await asyncpg.connect(stack.database_url, timeout=10)
    try:
        for schema in OUTBOX_SCHEMAS:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.outbox")
            if exists and await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {schema}.outbox)"):
                return False
        return True
    finally:
        await conn.close()


async def _caught_up(stack: LocalStack) -> bool:
    """True when each consumer stored a position at the real end of every partition of its topics."""
    topics = sorted({t for ts in STACK_CONSUMERS.values() for t in ts})
    ends = await log_ends(stack.broker.bootstrap, topics)
    conn = await asyncpg.connect(stack.database_url, timeout=10)
    try:
        for (schema, consumer), wanted in STACK_CONSUMERS.items():
            rows = await conn.fetch(
                f"SELECT topic, partition, next_offset FROM {schema}.consumer_position WHERE consumer = $1",
                consumer,
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if any(end > stored.get(tp, 0) for tp, end in ends.items() if tp[0] in wanted):
                return False
        return True
    finally:
        await conn.close()


async def log_ends(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The offset after the last record of every partition of `topics` that exist (shared.broker's
    end_offsets reads past the local broker's short ListOffsets answer)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    finally:
        await consumer.stop()
    return await end_offsets(bootstrap, partitions) if partitions else {}
