"""`make bench`: a 1,000,000-recipient campaign end to end — every service its own process, the broker,
PostgreSQL and the simulator with realistic delivery-report delays — next to the raw rates of the
components underneath, measured in the same run. Prints a table; writes artifacts/bench/e2e.json and e2e.png.
Each stage is timed where it happens: the simulator's own counts (messages stored, reports posted to
dlr-ingest) and the projector's read model (sent, delivered).

    E2E_RECIPIENTS=100000 E2E_REPLICAS=projector=2 E2E_ENV="projector:POLL_RECORDS=5000" .venv/bin/pytest -q -s -m bench tests/bench/test_bench_e2e.py

Nothing here asserts a speed: the figures are for people, the correctness checks are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from deploy.local.stack import REPO, LocalStack, StackOptions
from shared.infra.ports import free_port

pytestmark = pytest.mark.bench

RECIPIENTS = int(os.environ.get("E2E_RECIPIENTS", "1000000"))
# Processes per service, e.g. "projector=2" (each replica its own process, sharing its consumer group).
REPLICAS = {
    name: int(n)
    for name, n in (item.split("=") for item in os.environ.get("E2E_REPLICAS", "").split(",") if item)
}
# Extra environment of one service, to try a setting: E2E_ENV="projector:KAFKA_FETCH_MAX_BYTES=4194304;..."
SERVICE_ENV: dict[str, dict[str, str]] = {}
for item in filter(None, os.environ.get("E2E_ENV", "").split(",")):
    service, _, assignments = item.partition(":")
    SERVICE_ENV[service] = dict(a.split("=", 1) for a in assignments.split(";") if a)
OUT = REPO / "artifacts" / "bench"
BENCH_TOOLS = REPO / "services" / "dlr-ingest" / "bench"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent outside idle and I/O wait so far."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class RssSampler:
    """Peak resident memory of each process of the stack, sampled every half second in a thread, and the
    CPU seconds each spent while sampled (with the machine's total, so that what PostgreSQL and the rest
    took shows as the remainder). Light on purpose: it shares the machine with what it measures (reading
    every process of the machine to find children, five times a second, took a tenth of a core)."""

    TICK_S = 0.5
    FAMILY_EVERY_S = 5.0  # how often each process's children (worker processes) are looked up again

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.procs["benchmark (this process)"] = psutil.Process()
        self.families: dict[str, list[psutil.Process]] = {n: [p] for n, p in self.procs.items()}
        self.peak: dict[str, int] = dict.fromkeys(self.procs, 0)
        self.cpu: dict[str, float] = dict.fromkeys(self.procs, 0.0)
        self.machine_cpu = 0.0
        self.series: list[tuple[float, dict[str, int]]] = []
        self.cpu_series: list[tuple[float, dict[str, float]]] = []  # share of one core per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu_start: dict[str, float] = {}
        self._machine_start = 0.0
        self._started = time.monotonic()
        self.counted_from = 0.0  # seconds after the sampler's start

    def _find_families(self) -> None:
        for name, p in self.procs.items():
            if p.pid == os.getpid():
                continue  # its children are the stack's processes, counted on their own
            with contextlib.suppress(psutil.Error):
                self.families[name] = [p, *p.children(recursive=True)]

    def _read(self) -> tuple[dict[str, int], dict[str, float]]:
        rss: dict[str, int] = {}
        cpu: dict[str, float] = {}
        for name, family in self.families.items():
            for q in family:
                with contextlib.suppress(psutil.Error), q.oneshot():
                    rss[name] = rss.get(name, 0) + q.memory_info().rss
                    cpu[name] = cpu.get(name, 0.0) + sum(q.cpu_times()[:2])
        return rss, cpu

    def count_cpu_from_now(self) -> None:
        self._cpu_start, self._machine_start = self._read()[1], busy_cpu_seconds()
        self.counted_from = time.monotonic() - self._started

    def _run(self) -> None:
        started = self._started
        self._find_families()
        self.count_cpu_from_now()
        last: tuple[float, dict[str, float], float] | None = None
        found_at = time.monotonic()
        while not self._stop.wait(self.TICK_S):
            if time.monotonic() - found_at > self.FAMILY_EVERY_S:
                self._find_families()
                found_at = time.monotonic()
            now, cpu_now = self._read()
            machine_now = busy_cpu_seconds()
            for name, rss in now.items():
                self.peak[name] = max(self.peak[name], rss)
            at = time.monotonic() - started
            self.series.append((at, now))
            if last is not None:
                span = at - last[0]
                shares = {n: (v - last[1].get(n, v)) / span for n, v in cpu_now.items()}
                shares["machine"] = (machine_now - last[2]) / span
                self.cpu_series.append((at, shares))
            last = (at, cpu_now, machine_now)
            for name, seconds in cpu_now.items():
                self.cpu[name] = seconds - self._cpu_start.get(name, 0.0)
            self.machine_cpu = machine_now - self._machine_start

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def backend_cpu(dsn: str) -> dict[str, float]:
    """CPU seconds of the stack database's PostgreSQL backends so far, by application name (every service's
    pool names itself after its schema). Backends that have ended are not counted."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    out: dict[str, float] = {}
    for r in rows:
        with contextlib.suppress(psutil.Error):
            name = r["application_name"] or "unnamed"
            out[name] = out.get(name, 0.0) + sum(psutil.Process(r["pid"]).cpu_times()[:2])
    return out


async def projector_row_writes(dsn: str) -> dict[str, int]:
    """Rows the projector inserted per table so far (PostgreSQL's statistics, flushed before reading): how
    many reports were read before their send result (parked), and outcomes before their run's enqueue."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await asyncio.sleep(1.0)  # other backends flush within a second of going idle
        rows = await conn.fetch(
            """SELECT relname, n_tup_ins FROM pg_stat_user_tables WHERE schemaname = 'projector'
               AND relname IN ('recipients', 'deliveries', 'parked_reports', 'parked_outcomes')"""
        )
    finally:
        await conn.close()
    return {r["relname"]: r["n_tup_ins"] for r in rows}


def contacts_csv(count: int, first: int) -> Iterator[bytes]:
    yield b"phone,first_name\n"
    chunk = 20_000
    for start in range(0, count, chunk):
        yield "".join(
            f"+30694{first + i:07d},Guest{i}\n" for i in range(start, min(count, start + chunk))
        ).encode()


async def stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def raw_copy_and_update(dsn: str, rows: int) -> tuple[float, float]:
    """COPY of recipient-shaped rows, then one `UPDATE … FROM unnest` per 5,000 rows (the projector's naive path)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE raw_rcpt (id bigint PRIMARY KEY, campaign uuid, phone text, "
            "status text, message_id text)"
        )
        campaign = "00000000-0000-0000-0000-000000000001"
        records = [(i, campaign, f"+30694{i:07d}", "queued", None) for i in range(rows)]
        t = time.perf_counter()
        await conn.copy_records_to_table("raw_rcpt", records=records)
        copy_rate = rows / (time.perf_counter() - t)
        t = time.perf_counter()
        for start in range(0, rows, 5000):
            ids = list(range(start, min(rows, start + 5000)))
            await conn.execute(
                "UPDATE raw_rcpt r SET status = 'sent', message_id = u.m FROM unnest($1::bigint[], $2::text[]) "
                "AS u(id, m) WHERE r.id = u.id",
                ids,
                [f"m{i}" for i in ids],
            )
        update_rate = rows / (time.perf_counter() - t)
        return copy_rate, update_rate
    finally:
        await conn.close()


async def raw_produce(bootstrap: str, count: int = 200_000) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4")
    await producer.start()
    try:
        topic = f"bench.raw.{secrets.token_hex(3)}"
        value = b"x" * 200
        t = time.perf_counter()
        pending = [await producer.send(topic, value, key=str(i % 64).encode()) for i in range(count)]
        await asyncio.gather(*pending)
        return count / (time.perf_counter() - t)
    finally:
        await producer.stop()


def bare_http_rate(run_dir: Path) -> float:
    """Requests/s of a bare endpoint on the services' server stack, load from a separate process."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(BENCH_TOOLS / "bare.py"), "--port", str(port)],
        cwd=REPO,
        stdout=(run_dir / "bare.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        out = subprocess.run(
            [
                sys.executable,
                str(BENCH_TOOLS / "loadgen.py"),
                "--url",
                f"http://127.0.0.1:{port}/webhooks/mitto/dlr",
                "--reports",
                "1",
                "--seconds",
                "5",
            ],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return float(json.loads(out.stdout)["rps"])
    finally:
        server.terminate()
        server.wait(10)


def chart(
    timeline: list[tuple[float, dict[str, int]]],
    sim_timeline: list[tuple[float, int, int]],
    sampler: RssSampler,
    path: Path,
) -> None:
    """Progress, CPU per process and RSS per process on one time axis: seconds since the enqueue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    t = [p[0] for p in timeline]
    for key, label in (
        ("processed", "sent or failed"),
        ("accepted", "accepted by Mitto"),
        ("delivered", "delivery reported"),
    ):
        top.plot(t, [p[1].get(key, 0) for p in timeline], label=f"{label} (projected)")
    st = [p[0] for p in sim_timeline]
    top.plot(st, [p[1] for p in sim_timeline], label="stored by the simulator", linestyle="--")
    top.plot(st, [p[2] for p in sim_timeline], label="reports posted by the simulator", linestyle="--")
    top.set_title(f"{RECIPIENTS:,}-recipient campaign, end to end")
    top.set_ylabel("recipients")
    top.legend()
    zero = sampler.counted_from
    cpu = [(at - zero, shares) for at, shares in sampler.cpu_series if at >= zero]
    for n in sorted({n for _, c in cpu for n in c}):
        # One-second means: a half-second sample of a process's CPU is noisy.
        xs = [at for at, _ in cpu]
        ys = [c.get(n, 0.0) for _, c in cpu]
        smooth = [sum(ys[max(0, i - 1) : i + 1]) / len(ys[max(0, i - 1) : i + 1]) for i in range(len(ys))]
        middle.plot(xs, smooth, label=n, linestyle=":" if n == "machine" else "-")
    middle.set_ylabel("CPU (cores)")
    middle.legend(fontsize="small", ncol=4)
    names = sorted({n for _, r in sampler.series for n in r})
    rss = [(at - zero, r) for at, r in sampler.series if at >= zero]
    for n in names:
        bottom.plot([p[0] for p in rss], [p[1].get(n, 0) / 2**20 for p in rss], label=n)
    bottom.axhline(400, color="red", linestyle=":", label="400 MB")
    bottom.set_xlabel("seconds since enqueue")
    bottom.set_ylabel("RSS (MB)")
    bottom.legend(fontsize="small", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def test_bench_a_million_recipients_end_to_end() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(
        StackOptions(
            sim={
                "reject_share": "0.01",
                "dlr_delay_ms": "2000",
                "dlr_jitter_ms": "3000",
                "dlr_batch_size": "500",
            },
            log_level="WARNING",
            replicas=REPLICAS,
            env=SERVICE_ENV,
        )
    )
    await stack.start()
    timeline: list[tuple[float, dict[str, int]]] = []
    sim_timeline: list[tuple[float, int, int]] = []  # seconds, messages stored, reports posted
    try:
        with RssSampler(stack.pids()) as rss:
            async with httpx.AsyncClient(timeout=600) as http:
                enq, proj = stack.url("enqueuer"), stack.url("projector")
                r = await http.post(
                    f"{enq}/api/tenants",
                    headers={"X-Api-Key": stack.operator_key},
                    json={"name": "Bench", "channel": "shopify", "credits": RECIPIENTS * 3},
                )
                r.raise_for_status()
                key = r.json()["apiKey"]
                headers = {"X-Api-Key": key}
                t = time.perf_counter()
                r = await http.post(
                    f"{enq}/api/contacts/import?consent=granted",
                    content=stream(contacts_csv(RECIPIENTS, 1_000_000)),
                    headers={**headers, "Content-Type": "text/csv"},
                )
                r.raise_for_status()
                import_s = time.perf_counter() - t
                assert r.json()["imported"] == RECIPIENTS
                r = await http.post(
                    f"{enq}/api/campaigns",
                    headers=headers,
                    json={
                        "name": "Bench",
                        "text": "Hi {{first_name}}, 20% off today only!",
                        "audience": {"all": True},
                    },
                )
                r.raise_for_status()
                campaign = r.json()["id"]

                rss.count_cpu_from_now()  # the campaign's, not the import's
                pg_before = await backend_cpu(stack.database_url)
                t0 = time.perf_counter()
                r = await http.post(f"{enq}/api/campaigns/{campaign}/enqueue", headers=headers)
                r.raise_for_status()
                enqueue_s = time.perf_counter() - t0
                marks: dict[str, float] = {}
                sim = stack.url("mitto-sim")
                while True:
                    # The simulator's own counts: when each stage upstream of the projector finished.
                    sim_stats = (await http.get(f"{sim}/sim/stats")).json()
                    sim_timeline.append(
                        (
                            time.perf_counter() - t0,
                            sim_stats["messages_stored"],
                            sim_stats["reports_delivered"] + sim_stats["reports_failed"],
                        )
                    )
                    s = await http.get(f"{proj}/api/campaigns/{campaign}/status", headers=headers)
                    if s.status_code == 200:
                        st = s.json()["stats"]
                        now = time.perf_counter() - t0
                        timeline.append((now, st))
                        if st["accepted"] and "first_accepted" not in marks:
                            marks["first_accepted"] = now
                        if st["processed"] >= st["total"] == RECIPIENTS and "sent" not in marks:
                            marks["sent"] = now
                        if "sent" in marks and st["pendingDelivery"] == 0:
                            marks["reported"] = now
                            break
                    if time.perf_counter() - t0 > 1800:
                        raise AssertionError(
                            f"not finished after 30 minutes: {timeline[-1] if timeline else None}"
                        )
                    await asyncio.sleep(0.25)
                final = timeline[-1][1]
                pg_after = await backend_cpu(stack.database_url)
                inserted = await projector_row_writes(stack.database_url)
                sends = (await http.get(f"{stack.url('mitto-sim')}/sim/sends?campaign={campaign}")).json()
        copy_rate, update_rate = await raw_copy_and_update(stack.database_url, RECIPIENTS)
        produce_rate = await raw_produce(stack.broker.bootstrap)
        http_rate = await asyncio.to_thread(bare_http_rate, stack.dir)
    finally:
        await stack.stop()

    assert sends["max_per_phone"] == 1
    assert final["processed"] == RECIPIENTS
    assert final["sent"] + final["failed"] == RECIPIENTS
    e2e_s = marks["reported"]
    send_s = marks["sent"]
    stored, posted = sim_timeline[-1][1], sim_timeline[-1][2]
    sim_first = next(at for at, n, _ in sim_timeline if n)
    sim_stored_s = next(at for at, n, _ in sim_timeline if n == stored)
    sim_posted_s = next(at for at, _, n in sim_timeline if n == posted)
    result: dict[str, Any] = {
        "recipients": RECIPIENTS,
        "import_s": round(import_s, 2),
        "import_rows_per_s": round(RECIPIENTS / import_s),
        "enqueue_s": round(enqueue_s, 2),
        "enqueue_rows_per_s": round(RECIPIENTS / enqueue_s),
        "first_accepted_s": round(marks["first_accepted"], 2),
        "all_sent_s": round(send_s, 2),
        "send_messages_per_s": round(RECIPIENTS / (send_s - marks["first_accepted"])),
        "simulator": {
            "first_stored_s": round(sim_first, 2),
            "all_stored_s": round(sim_stored_s, 2),
            "messages_stored": stored,
            "stored_messages_per_s": round(stored / max(sim_stored_s - sim_first, 1e-9)),
            "all_reports_posted_s": round(sim_posted_s, 2),
            "reports_posted": posted,
        },
        "enqueue_to_last_report_s": round(e2e_s, 2),
        "end_to_end_messages_per_s": round(RECIPIENTS / e2e_s),
        "sent": final["sent"],
        "failed": final["failed"],
        "delivered": final["delivered"],
        "peak_rss_mb": {
            n: round(v / 2**20) for n, v in sorted(rss.peak.items()) if n != "benchmark (this process)"
        },
        "cpu_s": {
            **{n: round(v, 1) for n, v in sorted(rss.cpu.items())},
            "rest (PostgreSQL, ...)": round(rss.machine_cpu - sum(rss.cpu.values()), 1),
        },
        "postgres_backend_cpu_s": {
            n: round(v - pg_before.get(n, 0.0), 1) for n, v in sorted(pg_after.items())
        },
        "projector_rows_inserted": inserted,
        "raw": {
            "copy_rows_per_s": round(copy_rate),
            "batched_update_rows_per_s": round(update_rate),
            "produce_messages_per_s": round(produce_rate),
            "bare_http_requests_per_s": round(http_rate),
        },
    }
    result["ratios"] = {
        "enqueue_vs_copy": round(result["enqueue_rows_per_s"] / copy_rate, 3),
        "end_to_end_vs_batched_update": round(result["end_to_end_messages_per_s"] / update_rate, 3),
        "end_to_end_vs_produce": round(result["end_to_end_messages_per_s"] / produce_rate, 3),
    }
    (OUT / "e2e.json").write_text(json.dumps(result, indent=2))
    chart(timeline, sim_timeline, rss, OUT / "e2e.png")
    print(
        "\n"
        + "\n".join(
            [
                f"end to end, {RECIPIENTS:,} recipients (every service its own process)",
                f"  contacts import          {result['import_s']:>8.1f} s   {result['import_rows_per_s']:>9,} rows/s",
                f"  enqueue (materialise+publish) {result['enqueue_s']:>5.1f} s   {result['enqueue_rows_per_s']:>9,} rows/s"
                f"   vs raw COPY {copy_rate:>9,.0f} rows/s  ratio {result['ratios']['enqueue_vs_copy']:.2f}",
                f"  simulator: first message stored {sim_first:.1f} s after enqueue, all {stored:,} at "
                f"{sim_stored_s:.1f} s   {result['simulator']['stored_messages_per_s']:>9,} msg/s",
                f"  simulator: every delivery report posted to dlr-ingest at {sim_posted_s:.1f} s",
                f"  projected: first message accepted {result['first_accepted_s']:.1f} s after enqueue",
                f"  projected: every message sent {result['all_sent_s']:>8.1f} s   {result['send_messages_per_s']:>9,} msg/s",
                f"  enqueue -> last report   {e2e_s:>8.1f} s   {result['end_to_end_messages_per_s']:>9,} msg/s end to end"
                f"   (target >= 10,000; 1M in <= 100 s)",
                f"  raw batched UPDATE       {update_rate:>9,.0f} rows/s   ratio e2e/update "
                f"{result['ratios']['end_to_end_vs_batched_update']:.2f}",
                f"  raw produce (acks=all)   {produce_rate:>9,.0f} msg/s    ratio e2e/produce "
                f"{result['ratios']['end_to_end_vs_produce']:.2f}",
                f"  raw bare HTTP endpoint   {http_rate:>9,.0f} req/s",
                "  peak RSS (MB): " + ", ".join(f"{n} {v}" for n, v in result["peak_rss_mb"].items()),
                "  CPU seconds: " + ", ".join(f"{n} {v}" for n, v in result["cpu_s"].items()),
                "  of which PostgreSQL backends by client: "
                + ", ".join(f"{n} {v}" for n, v in result["postgres_backend_cpu_s"].items()),
                f"  projector: {inserted.get('parked_reports', 0):,} of {inserted.get('deliveries', 0):,} reports read "
                f"before their send result, {inserted.get('parked_outcomes', 0):,} outcomes before their run",
                f"  results: {OUT / 'e2e.json'}, chart: {OUT / 'e2e.png'}",
            ]
        )
    )
