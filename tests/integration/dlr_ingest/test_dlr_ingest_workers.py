"""`WORKERS=2`: two processes accept on one port, each with its own producer, and every 202 is in the log."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio

from shared.events import DeliveryReported, decode
from shared.infra.ports import free_port
from shared.infra.postgres import resolve_server
from shared.infra.tansu import TansuBroker
from tests.support import eventually, records_of

REPO = Path(__file__).resolve().parents[3]


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dlr_ingest"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


@pytest_asyncio.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, TansuBroker, int]]:
    server = await resolve_server(Path(tmp_path_factory.mktemp("pg")))
    name = f"dlr_ingest_workers_{secrets.token_hex(4)}"
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "dlr-ingest.log"
    with TansuBroker() as broker:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("KAFKA_", "WEBHOOK_", "DATABASE_URL"))
            },
            "DATABASE_URL": await server.create_database(name),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "KAFKA_PARTITIONS": "3",
            "WEBHOOK_SECRETS": '["w-secret"]',
            "HTTP_PORT": str(port),
            "WORKERS": "2",
            "LOG_LEVEL": "WARNING",
        }
        proc = spawn(env, log)
        try:
            url = f"http://127.0.0.1:{port}"

            async def ready() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    async with httpx.AsyncClient() as client:
                        return (await client.get(f"{url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=90, every=0.3, what="dlr-ingest with two workers")
            yield url, broker, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await server.drop_database(name)
            server.stop()


async def test_two_workers_share_the_port_and_every_accepted_report_is_in_the_log(
    served: tuple[str, TansuBroker, int],
) -> None:
    url, broker, pid = served
    workers = psutil.Process(pid).children(recursive=True)
    assert len([w for w in workers if "python" in w.name().lower()]) >= 2
    run = secrets.token_hex(4)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        bodies = [
            [{"messageId": f"{run}-{i}-{j}", "deliveryStatus": "Delivered"} for j in range(20)]
            for i in range(40)
        ]
        answers = await asyncio.gather(
            *(
                http.post("/webhooks/mitto/dlr", json=b, headers={"X-Webhook-Secret": "w-secret"})
                for b in bodies
            )
        )
    assert [a.status_code for a in answers] == [202] * len(bodies)
    for i in (0, 17, 39):
        for j in (0, 19):
            found = await records_of(broker.bootstrap, "delivery.reports", f"{run}-{i}-{j}".encode())
            assert len(found) == 1
            _, event = decode(found[0][1])
            assert isinstance(event, DeliveryReported)
