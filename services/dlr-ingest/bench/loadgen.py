"""HTTP/1.1 load generator for the webhook benchmark, run as its own process so that its CPU is not the
server's: raw asyncio sockets, keep-alive connections, pre-built requests, no HTTP library on the hot path.

    python loadgen.py --url http://127.0.0.1:8003/webhooks/mitto/dlr --reports 100 --seconds 10 \
        [--connections 64 | --rate 2000] [--header 'X-Webhook-Secret: s']

Closed loop (default): every connection sends its next request as soon as the answer arrives: the server's
maximum rate. Open loop (`--rate`): requests start on a fixed schedule whatever the answers do, and latency
is measured from the scheduled start, so a stalled server cannot hide its queueing (no coordinated omission).
Prints one JSON object: requests, reports, seconds, rates, latency percentiles (ms), status counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # pragma: no cover - the benchmark environment has it
    uvloop = None  # type: ignore[assignment]

BODIES = 512


def build_requests(url: str, reports: int, headers: list[str], run: str) -> list[bytes]:
    """Distinct bodies (distinct message ids spread over every partition), cycled through."""
    parts = urlsplit(url)
    out = []
    for b in range(BODIES):
        items = ",".join(
            f'{{"messageId":"{run}-{b}-{i}","deliveryStatus":"Delivered",'
            f'"updatedAt":"2025-12-11T08:50:10.414Z","error":null}}'
            for i in range(reports)
        )
        body = (items if reports == 1 else f"[{items}]").encode()
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
        )
        out.append(head.encode() + body)
    return out


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def connect(host: str, port: int) -> Connection:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    return Connection(reader, writer)


async def run(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = build_requests(args.url, args.reports, args.header, args.run or os.urandom(4).hex())
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    if args.rate:
        # Open loop: a pool of connections takes scheduled requests from a queue.
        queue: asyncio.Queue[float] = asyncio.Queue()
        pool_size = args.connections

        async def worker(n: int) -> None:
            nonlocal errors
            conn = await connect(host, port)
            i = n
            while True:
                scheduled = await queue.get()
                if scheduled < 0:
                    return
                try:
                    status = await conn.call(requests[i % BODIES])
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    conn = await connect(host, port)
                    continue
                latencies.append(time.perf_counter() - scheduled)
                statuses[status] += 1
                i += pool_size

        workers = [asyncio.create_task(worker(n)) for n in range(pool_size)]
        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        while next_at < deadline:
            now = time.perf_counter()
            while next_at <= now:
                queue.put_nowait(next_at)
                next_at += interval
            await asyncio.sleep(max(0.0, min(next_at - time.perf_counter(), 0.001)))
        for _ in workers:
            queue.put_nowait(-1.0)
        await asyncio.gather(*workers)
    else:

        async def loop(n: int) -> None:
            nonlocal errors
            conn = await connect(host, port)
            i = n
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    status = await conn.call(requests[i % BODIES])
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    conn = await connect(host, port)
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1
                i += args.connections

        await asyncio.gather(*(loop(n) for n in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0
        )

    done = len(latencies)
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "requests": done,
        "ok": ok,
        "reports": ok * args.reports,
        "seconds": round(elapsed, 3),
        "rps": round(ok / elapsed, 1),
        "reports_per_s": round(ok * args.reports / elapsed, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--reports", type=int, default=1, help="reports per body (1 = a bare object)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second (open loop)")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--run", default="", help="message id prefix")
    args = parser.parse_args()
    result = uvloop.run(run(args)) if uvloop else asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
