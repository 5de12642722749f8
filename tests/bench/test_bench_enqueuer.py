"""Benchmark: import 1,000,000 contacts and enqueue a 1,000,000-recipient campaign (materialise, price and
publish 200 batches), next to a raw COPY of the same rows measured in the same run, and the enqueuer's peak
RSS. Prints figures; never asserts on speed (it asserts only that the work was done)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import asyncpg
import httpx
import psutil
import pytest

from shared.infra.ports import free_port
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import end_offsets, eventually

REPO = Path(__file__).resolve().parents[2]
ROWS = int(os.environ.get("BENCH_ENQUEUER_ROWS", "1000000"))
NAMES = [f"Name{i}" for i in range(300)] + ["Ελένη", "Νίκος", "Μαρία"]
TEXT = "Hi {{first_name}}, our autumn sale starts today: 20% off everything in store and online!"


class PeakRss:
    """Samples a process's resident memory until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


def csv_chunks(rows: int, per_chunk: int = 20_000) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        yield b"phone,first_name,city\n"
        for start in range(0, rows, per_chunk):
            lines = [
                f"+30694{n:07d},{NAMES[n % len(NAMES)]},City{n % 40}\n"
                for n in range(start, min(rows, start + per_chunk))
            ]
            yield "".join(lines).encode()

    return gen()


async def raw_copy(dsn: str, rows: int, *, like_recipients: bool) -> float:
    """Seconds to COPY (binary) the rows a 1M enqueue materialises, (campaign, phone, values as JSON text),
    into a plain table without keys (PostgreSQL's raw rate), or into a table LIKE enqueuer.recipients, with
    its columns, defaults, primary key and unique (campaign_id, phone) index (the raw rate of what
    materialising must write: the enqueue's baseline)."""
    conn = await asyncpg.connect(dsn)
    try:
        if like_recipients:
            await conn.execute("CREATE TABLE bench_raw_recipients (LIKE enqueuer.recipients INCLUDING ALL)")
        else:
            await conn.execute(
                "CREATE TABLE bench_raw_recipients (campaign_id uuid, phone text, values_json text)"
            )
        campaign = uuid.uuid4()
        records = [
            (campaign, f"+30694{n:07d}", f'{{"first_name":"{NAMES[n % len(NAMES)]}"}}') for n in range(rows)
        ]
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_raw_recipients", records=records, columns=("campaign_id", "phone", "values_json")
        )
        return time.perf_counter() - started
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_raw_recipients")
        await conn.close()


def spawn_enqueuer(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "enqueuer"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


@pytest.mark.bench
async def test_bench_enqueuer_import_and_enqueue_a_million() -> None:
    pg = await resolve_server(REPO / ".run" / "pgdata")
    broker = TansuBroker()
    broker.start()
    name = f"bench_enqueuer_{secrets.token_hex(4)}"
    dsn = await pg.create_database(name)
    port, operator = free_port(), secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=dsn,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        OPERATOR_API_KEY=operator,
        HTTP_PORT=str(port),
        BATCH_SIZE="5000",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    log = (REPO / ".run" / f"{name}.log").open("wb")
    proc = spawn_enqueuer(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600.0) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            r = await http.post(
                "/api/tenants",
                json={"name": "Bench", "channel": "retail", "credits": 100 * ROWS},
                headers={"X-Api-Key": operator},
            )
            assert r.status_code == 201, r.text
            key = {"X-Api-Key": r.json()["apiKey"]}

            with PeakRss(proc.pid) as import_rss:
                started = time.perf_counter()
                r = await http.post(
                    "/api/contacts/import",
                    content=csv_chunks(ROWS),
                    headers={**key, "Content-Type": "text/csv"},
                )
                import_s = time.perf_counter() - started
            assert r.status_code == 200, r.text
            assert r.json()["imported"] == ROWS

            copy_s = await raw_copy(dsn, ROWS, like_recipients=False)
            keyed_copy_s = await raw_copy(dsn, ROWS, like_recipients=True)

            r = await http.post(
                "/api/campaigns", json={"name": "Bench", "text": TEXT, "audience": {"all": True}}, headers=key
            )
            assert r.status_code == 201, r.text
            campaign = r.json()["id"]
            conn = await asyncpg.connect(dsn)
            with PeakRss(proc.pid) as enqueue_rss:
                started = time.perf_counter()
                r = await http.post(f"/api/campaigns/{campaign}/enqueue", headers=key)
                answered_s = time.perf_counter() - started
                assert r.status_code == 200, r.text
                batches = r.json()["enqueuedJobs"]

                async def relayed() -> bool:
                    return not await conn.fetchval("SELECT count(*) FROM enqueuer.outbox")

                await eventually(relayed, timeout=300, every=0.02, what="every batch published")
                published_s = time.perf_counter() - started
            await conn.close()
            in_log = sum((await end_offsets(broker.bootstrap, ["sms.batches"])).values())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        broker.stop()
        with contextlib.suppress(Exception):
            await pg.drop_database(name)
        pg.stop()

    assert r.json()["queued"] == ROWS
    assert in_log == batches == -(-ROWS // 5000)
    copy_rate = ROWS / copy_s
    keyed_rate = ROWS / keyed_copy_s
    enqueue_rate = ROWS / published_s
    mb = 1024 * 1024
    print(
        f"\nenqueuer, {ROWS:,} rows (raw COPY: binary, of (campaign_id, phone, values_json) rows)"
        f"\n  raw COPY, plain table without keys:   {copy_s:6.2f} s  {copy_rate:10,.0f} rows/s"
        f"\n  raw COPY, table LIKE recipients (its primary key and unique (campaign_id, phone)):"
        f"\n                                        {keyed_copy_s:6.2f} s  {keyed_rate:10,.0f} rows/s"
        f"  <- the enqueue's baseline"
        f"\n  import (CSV, streamed):               {import_s:6.2f} s  {ROWS / import_s:10,.0f} rows/s"
        f"  ({ROWS / import_s / copy_rate:.0%} of plain COPY; peak RSS {import_rss.peak / mb:.0f} MB)"
        f"\n  enqueue answered:                     {answered_s:6.2f} s"
        f"\n  enqueue + {batches} batches published:    {published_s:6.2f} s  {enqueue_rate:10,.0f} rows/s"
        f"  ({enqueue_rate / keyed_rate:.0%} of COPY LIKE recipients, {enqueue_rate / copy_rate:.0%} of plain"
        f" COPY; peak RSS {enqueue_rss.peak / mb:.0f} MB)"
        f"\n  cost reserved: {r.json()['cost']['credits']:,} credits"
    )
