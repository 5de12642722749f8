"""A whole local stack on this machine: broker, database, Mitto simulator and the four services, each its
own process. Used by `make run`, the end-to-end tests and the benchmarks.

The broker keeps its log in memory, so each stack gets a fresh database too: the broker log and the
consumer positions stored in PostgreSQL are always born (and die) together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.infra.ports import free_port
from shared.infra.postgres import PostgresServer, resolve_server
from shared.infra.tansu import TansuBroker

SERVICES = ("enqueuer", "sender", "dlr-ingest", "projector")
MODULES = {
    "enqueuer": "enqueuer",
    "sender": "sender",
    "dlr-ingest": "dlr_ingest",
    "projector": "projector",
    "mitto-sim": "mitto_sim",
}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class StackOptions:
    partitions: int = 6
    batch_size: int = 5000
    log_level: str = "INFO"
    sim: dict[str, str] = field(default_factory=dict)  # MITTO_SIM_* overrides, without the prefix
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # extra environment per service
    run_dir: Path = REPO / ".run"
    quick_rebalance: bool = True  # short session timeouts: tests and local runs, not production
    # Processes per service (default 1). Replicas of a consumer share its group and so its partitions.
    replicas: dict[str, int] = field(default_factory=dict)
    # Services to start (the simulator always starts): a test of one service can leave the others out.
    services: tuple[str, ...] = SERVICES


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalStack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.stack_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.dir = self.options.run_dir / self.stack_id
        self.operator_key = f"op_{secrets.token_urlsafe(24)}"
        self.webhook_secret = secrets.token_urlsafe(24)
        self.links_secret = secrets.token_urlsafe(24)
        self.broker = TansuBroker(log_path=self.dir / "broker.log")
        self.pg: PostgresServer | None = None
        self.database_url = ""
        self.database_name = f"smsflow_{self.stack_id.replace('-', '_')}"
        self.processes = {name: Process(name, free_port()) for name in (*SERVICES, "mitto-sim")}
        # Replica 0 of each service is `processes[name]`; the others are named `name-2`, `name-3`, ...
        self.replicas: dict[str, list[Process]] = {
            name: [proc]
            + [Process(f"{name}-{i}", free_port()) for i in range(2, self.options.replicas.get(name, 1) + 1)]
            for name, proc in self.processes.items()
        }

    def url(self, name: str, replica: int = 0) -> str:
        return self.replicas[name][replica].url

    def alive(self, name: str) -> list[int]:
        """Indexes of the replicas of `name` whose process is running."""
        return [
            i for i, p in enumerate(self.replicas[name]) if p.popen is not None and p.popen.poll() is None
        ]

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker.start()  # from this thread: the parent-death signal is tied to it
        self.pg = await resolve_server(self.options.run_dir / "pgdata")
        self.database_url = await self.pg.create_database(self.database_name)
        self._spawn("mitto-sim")
        await self.wait_ready("mitto-sim", path="/healthz")
        started = [name for name in SERVICES if name in self.options.services]
        for name in started:
            for replica in range(len(self.replicas[name])):
                self._spawn(name, replica)
        for name in started:
            for replica in range(len(self.replicas[name])):
                await self.wait_ready(name, replica=replica)

    def environment(self, name: str, replica: int = 0) -> dict[str, str]:
        o = self.options
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MITTO_", "DATABASE_URL"))}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": o.log_level,
                "LOG_JSON": "true",
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(self.replicas[name][replica].port),
                "DATABASE_URL": self.database_url,
                "OPERATOR_API_KEY": self.operator_key,
                "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
                "KAFKA_PARTITIONS": str(o.partitions),
                "LINKS_SECRET": self.links_secret,
                "LINKS_BASE_URL": self.url("dlr-ingest"),
            }
        )
        if o.quick_rebalance:
            env.update({"KAFKA_SESSION_TIMEOUT_MS": "6000", "KAFKA_HEARTBEAT_INTERVAL_MS": "1000"})
        if name == "enqueuer":
            env["BATCH_SIZE"] = str(o.batch_size)
            env["CORS_ALLOW_ORIGINS"] = f'["{self.url("projector")}"]'  # the dashboard sends commands
        if name == "projector":
            env["ENQUEUER_PUBLIC_URL"] = self.url("enqueuer")
        if name == "sender":
            env["MITTO_BASE_URL"] = self.url("mitto-sim")
            env["MITTO_API_KEY"] = "local-sim-key"
        if name == "dlr-ingest":
            env["WEBHOOK_SECRETS"] = f'["{self.webhook_secret}"]'
            env["PROJECTOR_URL"] = self.url("projector")
            env["MITTO_BASE_URL"] = self.url("mitto-sim")
            env["MITTO_API_KEY"] = "local-sim-key"
        if name == "mitto-sim":
            env.update(
                {
                    "MITTO_SIM_PORT": str(self.processes[name].port),
                    "MITTO_SIM_API_KEY": "local-sim-key",
                    "MITTO_SIM_WEBHOOK_URL": f"{self.url('dlr-ingest')}/webhooks/mitto/dlr",
                    "MITTO_SIM_WEBHOOK_HEADERS": f'{{"X-Webhook-Secret": "{self.webhook_secret}"}}',
                }
            )
            env.update({f"MITTO_SIM_{k.upper()}": v for k, v in o.sim.items()})
        env.update(o.env.get(name, {}))
        return env

    def _spawn(self, name: str, replica: int = 0) -> None:
        proc = self.replicas[name][replica]
        log = (self.dir / f"{proc.name}.log").open("ab")
        proc.popen = subprocess.Popen(
            [sys.executable, "-m", MODULES[name]],
            cwd=REPO,
            env=self.environment(name, replica),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(
        self, name: str, path: str = "/readyz", timeout: float = 90.0, *, replica: int = 0
    ) -> None:
        proc = self.replicas[name][replica]
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.popen is not None and proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"{proc.name} exited with {proc.popen.returncode}; see {self.dir / (proc.name + '.log')}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(proc.url + path)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError(
            f"{proc.name} not ready after {timeout:.0f}s; see {self.dir / (proc.name + '.log')}"
        )

    def kill(self, name: str, sig: int = signal.SIGKILL, *, replica: int = 0) -> None:
        """Signal one process and wait for it to end (SIGTERM: after its graceful shutdown)."""
        popen = self.replicas[name][replica].popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(sig)
            popen.wait(timeout=30)

    async def restart(self, name: str, *, replica: int = 0) -> None:
        self.kill(name, replica=replica)
        self._spawn(name, replica)
        await self.wait_ready(name, path="/healthz" if name == "mitto-sim" else "/readyz", replica=replica)

    def pids(self) -> dict[str, int]:
        out = {
            p.name: p.popen.pid
            for procs in self.replicas.values()
            for p in procs
            if p.popen and p.popen.poll() is None
        }
        if self.broker.pid:
            out["broker"] = self.broker.pid
        return out

    async def stop(self) -> None:
        every = [p for name in (*reversed(SERVICES), "mitto-sim") for p in self.replicas[name]]
        for proc in every:
            popen = proc.popen
            if popen is not None and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for proc in every:
            popen = proc.popen
            if popen is not None:
                try:
                    await asyncio.to_thread(popen.wait, 20)
                except subprocess.TimeoutExpired:
                    popen.kill()
        await asyncio.to_thread(self.broker.stop)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                await self.pg.drop_database(self.database_name)
            self.pg.stop()
