"""`make run`: start the whole stack, create a demo tenant and a 10,000-recipient campaign, send it, show
progress until every delivery report is in, print the URLs, and keep running until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import httpx

from deploy.local.stack import LocalStack, StackOptions


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "#" * filled + "." * (width - filled)


async def demo(stack: LocalStack, recipients: int) -> None:
    enqueuer, projector = stack.url("enqueuer"), stack.url("projector")
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(
            f"{enqueuer}/api/tenants",
            json={"name": "Demo boutique", "channel": "retail"},
            headers={"X-Api-Key": stack.operator_key},
        )
        r.raise_for_status()
        key = r.json()["apiKey"]
        people = [
            {"phone": f"+30694{n:07d}", "firstName": f"Guest{n}"}
            for n in range(2_000_000, 2_000_000 + recipients)
        ]
        r = await http.post(
            f"{enqueuer}/api/campaigns",
            headers={"X-Api-Key": key},
            json={
                "name": "Demo: autumn sale",
                "text": "Hi {{first_name}}, autumn sale: 20% off everything today!",
                "recipients": people,
            },
        )
        r.raise_for_status()
        campaign = r.json()["id"]
        started = time.monotonic()
        r = await http.post(f"{enqueuer}/api/campaigns/{campaign}/enqueue", headers={"X-Api-Key": key})
        r.raise_for_status()
        print(f"enqueued {r.json()['queued']} recipients in {r.json()['enqueuedJobs']} batches")
        status_url = f"{projector}/api/campaigns/{campaign}/status"
        while True:
            s = await http.get(status_url, headers={"X-Api-Key": key})
            if s.status_code == 200:
                body = s.json()
                st, state = body["stats"], body["campaign"]["status"]
                print(
                    f"\r[{_bar(st['processed'], st['total'])}] {state:<9} sent {st['sent']:>6}  "
                    f"failed {st['failed']:>4}  delivered {st['delivered']:>6}/{st['sent']:<6} "
                    f"{time.monotonic() - started:5.1f}s",
                    end="",
                    flush=True,
                )
                if state in ("completed", "failed") and st["pendingDelivery"] == 0:
                    break
            await asyncio.sleep(0.5)
        print()
    print(f"\nDashboard:        {projector}/dashboard/#/campaigns/{campaign}")
    print(f"  sign in with the demo tenant's API key: {key}")
    print(f"Campaign status:  curl -H 'X-Api-Key: {key}' {status_url}")
    print(f"Read API docs:    {projector}/docs")


async def main(recipients: int) -> None:
    stack = LocalStack(
        StackOptions(sim={"reject_share": "0.01", "dlr_delay_ms": "1500", "dlr_jitter_ms": "1500"})
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("starting broker, database, Mitto simulator and the four services ...")
    try:
        await stack.start()
        print(f"stack {stack.stack_id} up; logs in {stack.dir}")
        for name in ("enqueuer", "sender", "dlr-ingest", "projector", "mitto-sim"):
            print(f"  {name:<11} {stack.url(name)}")
        task = asyncio.create_task(demo(stack, recipients))
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            print("\nRunning. Press Ctrl-C to stop everything.")
            await stop.wait()
        else:
            task.cancel()
    finally:
        print("\nstopping ...")
        with contextlib.suppress(Exception):
            await stack.stop()
        print("stopped.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=10_000)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.recipients))
    except KeyboardInterrupt:
        sys.exit(130)
