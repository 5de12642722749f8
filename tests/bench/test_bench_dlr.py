"""Benchmark: the delivery-report webhook under load, next to the bare server stack and the bare producer.

Load comes from a separate process (services/dlr-ingest/bench/loadgen.py: raw sockets, keep-alive). In the
same run it measures: a bare endpoint on the same stack (uvicorn + FastAPI + the common middleware, answering
202 — services/dlr-ingest/bench/bare.py), the webhook with single-report and 100-report bodies (closed loop:
its maximum), the webhook at half that rate (open loop: latency percentiles), and the raw produce rate of
aiokafka with acks=all. Prints figures; asserts only that what was accepted is in the log.

    make bench                                   # every benchmark
    BENCH_DLR_SECONDS=20 BENCH_DLR_WORKERS=1,2 BENCH_DLR_REPEATS=3 .venv/bin/pytest -q -s -m bench tests/bench/test_bench_dlr.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from shared.broker import ensure_topics
from shared.infra.ports import free_port
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import end_offsets

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "services" / "dlr-ingest" / "bench"
SECONDS = float(os.environ.get("BENCH_DLR_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_DLR_CONNECTIONS", "64"))
WORKERS = [int(w) for w in os.environ.get("BENCH_DLR_WORKERS", "1,2").split(",")]
REPEATS = int(os.environ.get("BENCH_DLR_REPEATS", "3"))  # turns of bare and webhook, single reports
SECRET = "bench-webhook-secret"
PARTITIONS = 6


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        popen = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield popen
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


async def wait_ready(url: str, popen: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"{url} exited with {popen.returncode}; see {log}")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready; see {log}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a server process and its workers so far."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


async def load(
    url: str, *, reports: int, server: int, rate: float = 0.0, seconds: float = SECONDS
) -> dict[str, Any]:
    """One run of the load generator; adds the server's CPU per request, a figure that other people's work
    on a shared machine skews much less than the rates."""
    args = [
        sys.executable, str(BENCH / "loadgen.py"), "--url", f"{url}/webhooks/mitto/dlr",
        "--reports", str(reports), "--seconds", str(seconds), "--connections", str(CONNECTIONS),
        "--header", f"X-Webhook-Secret: {SECRET}", "--run", secrets.token_hex(4),
    ]  # fmt: skip
    if rate:
        args += ["--rate", f"{rate:.1f}"]
    cpu_before = cpu_seconds(server)
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    cpu = cpu_seconds(server) - cpu_before
    result["server_cpu_us_per_request"] = round(cpu / max(1, result["requests"]) * 1e6, 1)
    return result


async def raw_produce(bootstrap: str, count: int = 200_000, lanes: int = 32) -> float:
    """Records per second of aiokafka's own `send()` with acks=all and many records in flight (`lanes`
    tasks, each sending 100 and awaiting them): the broker path's raw rate, records shaped like the
    webhook's (~420-byte values, 26-character keys, 6 partitions)."""
    value = b"x" * 420
    await ensure_topics(bootstrap, ["bench.raw"], PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4")
    await producer.start()
    try:

        async def lane(n: int) -> None:
            for start in range(n * 100, count, lanes * 100):
                sent = [
                    await producer.send("bench.raw", value, key=f"RAW{i:023d}".encode())
                    for i in range(start, min(count, start + 100))
                ]
                await asyncio.gather(*sent)

        await producer.send_and_wait("bench.raw", value, key=b"warm-up")
        started = time.perf_counter()
        await asyncio.gather(*(lane(n) for n in range(lanes)))
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


def line(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name:<34} {r['rps']:>9.0f} req/s {r['reports_per_s']:>10.0f} reports/s"
        f"   p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms"
        f"  server CPU {r['server_cpu_us_per_request']:>6.0f} us/request  {r['statuses']}"
    )


async def measure(workers: int, broker: TansuBroker, database_url: str, run_dir: Path) -> dict[str, Any]:
    """One configuration: `workers` processes for the webhook and for the bare endpoint alike."""
    dlr_port, bare_port = free_port(), free_port()
    dlr_url, bare_url = f"http://127.0.0.1:{dlr_port}", f"http://127.0.0.1:{bare_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WEBHOOK_", "DATABASE_URL"))},
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_PARTITIONS": str(PARTITIONS),
        "WEBHOOK_SECRETS": f'["{SECRET}"]',
        "HTTP_PORT": str(dlr_port),
        "WORKERS": str(workers),
        "LOG_LEVEL": "WARNING",
    }
    results: dict[str, Any] = {}
    ratios: dict[int, list[float]] = {}  # per body size: webhook ÷ bare of each turn, sorted
    dlr_log, bare_log = run_dir / f"dlr-ingest-{workers}.log", run_dir / f"bare-{workers}.log"
    bare_args = [sys.executable, str(BENCH / "bare.py"), "--port", str(bare_port), "--workers", str(workers)]
    with (
        process([sys.executable, "-m", "dlr_ingest"], env, dlr_log) as dlr,
        process(bare_args, env, bare_log) as bare,
    ):
        await wait_ready(dlr_url, dlr, dlr_log)
        await wait_ready(bare_url, bare, bare_log)
        before = sum((await end_offsets(broker.bootstrap, ["delivery.reports"])).values())
        await load(dlr_url, reports=1, seconds=2, server=dlr.pid)  # warm-up: connections, metadata
        await load(bare_url, reports=1, seconds=2, server=bare.pid)
        for reports in (1, 100):
            # Single reports are the close call: bare and webhook take turns, and the middle pair counts.
            pairs = []
            for _ in range(REPEATS if reports == 1 else 1):
                pairs.append(
                    (
                        await load(bare_url, reports=reports, server=bare.pid),
                        await load(dlr_url, reports=reports, server=dlr.pid),
                    )
                )
            turns = sorted(
                ((hook["rps"] / bare_r["rps"], bare_r, hook) for bare_r, hook in pairs), key=lambda t: t[0]
            )
            ratios[reports] = [round(ratio, 3) for ratio, _, _ in turns]
            _, results[f"bare {reports}"], results[f"webhook {reports}"] = turns[len(turns) // 2]
            half = results[f"webhook {reports}"]["rps"] / 2
            results[f"webhook {reports} at half"] = await load(
                dlr_url, reports=reports, rate=half, server=dlr.pid
            )
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{dlr_url}/metrics")).text
        after = sum((await end_offsets(broker.bootstrap, ["delivery.reports"])).values())
    accepted = sum(r["reports"] for k, r in results.items() if k.startswith("webhook"))
    # The log holds at least every report answered 202 (plus the warm-up's).
    assert after - before >= accepted, "a report answered 202 is missing from the log"
    publish = [
        ln for ln in metrics.splitlines() if ln.startswith("dlr_publish_seconds_") and "bucket" not in ln
    ]
    print(
        f"\ndlr-ingest webhook, {workers} worker process(es), {CONNECTIONS} connections, {SECONDS:.0f} s per run"
    )
    for key, r in results.items():
        print(line(key, r))
    for reports in (1, 100):
        bare_r, hook = results[f"bare {reports}"], results[f"webhook {reports}"]
        half = results[f"webhook {reports} at half"]
        extra_cpu = hook["server_cpu_us_per_request"] - bare_r["server_cpu_us_per_request"]
        print(
            f"  {reports:>3}-report bodies: webhook = {hook['rps'] / bare_r['rps']:.0%} of the bare endpoint's"
            f" requests/s, {hook['reports_per_s']:.0f} reports/s; at half that rate p99 {half['p99_ms']:.1f} ms;"
            f" CPU beyond the bare stack {extra_cpu / reports:.1f} us per report"
        )
        if len(ratios[reports]) > 1:
            turns = ", ".join(f"{r:.0%}" for r in ratios[reports])
            print(f"      each turn (sorted): {turns}; the middle one is shown")
    print("  one worker's publish latency: " + "; ".join(publish[:2]))
    return results


@pytest.mark.bench
async def test_bench_dlr_webhook(tmp_path: Path) -> None:
    server = await resolve_server(tmp_path / "pg")
    name = f"bench_dlr_{secrets.token_hex(4)}"
    database_url = await server.create_database(name)
    all_results: dict[str, Any] = {}
    try:
        with TansuBroker(log_path=tmp_path / "broker.log") as broker:
            for workers in WORKERS:
                all_results[f"{workers} worker(s)"] = await measure(workers, broker, database_url, tmp_path)
            raw = await raw_produce(broker.bootstrap)
    finally:
        await server.drop_database(name)
        server.stop()
    print(f"\nraw aiokafka send() with acks=all, same broker, same run: {raw:.0f} records/s")
    for config, results in all_results.items():
        print(
            f"  {config}: webhook with 100-report bodies = {results['webhook 100']['reports_per_s'] / raw:.0%} of it"
        )
    print(orjson.dumps({"raw_produce_per_s": round(raw), **all_results}).decode())
