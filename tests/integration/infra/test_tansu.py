"""The local Tansu broker: really ready after start, partitions and round trips work, pause/resume
injects an outage, and no process outlives a stop or a killed parent."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from shared.infra.tansu import TansuBroker, binary_path

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    with TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log") as running:
        yield running


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_binary_is_executable() -> None:
    assert binary_path().is_file()
    assert subprocess.run([binary_path(), "--version"], capture_output=True, check=True).stdout


async def test_topic_with_four_partitions_round_trips_messages(broker: TansuBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("infra.roundtrip", num_partitions=4, replication_factor=1)])
        [described] = await admin.describe_topics(["infra.roundtrip"])
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert len(described["partitions"]) == 4
    assert cluster["cluster_id"] == broker.cluster_id

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for partition in range(4):
            await producer.send_and_wait(
                "infra.roundtrip", f"m{partition}".encode(), key=b"k", partition=partition
            )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition("infra.roundtrip", p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        batches = await consumer.getmany(*partitions, timeout_ms=5000)
    finally:
        await consumer.stop()
    received = {tp.partition: [r.value for r in records] for tp, records in batches.items()}
    assert received == {p: [f"m{p}".encode()] for p in range(4)}


async def test_paused_broker_fails_a_produce_and_serves_again_after_resume(broker: TansuBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=1000)
    await producer.start()
    try:
        await producer.send_and_wait("infra.pause", b"before")
        broker.pause()
        try:
            with pytest.raises((KafkaError, TimeoutError)):
                await asyncio.wait_for(producer.send_and_wait("infra.pause", b"during"), 3)
            assert broker.is_running()
        finally:
            broker.resume()
        await asyncio.wait_for(producer.send_and_wait("infra.pause", b"after"), 10)
    finally:
        await producer.stop()


def test_restart_gives_an_empty_broker_with_a_new_cluster_id_on_the_same_port() -> None:
    with TansuBroker() as broker:
        port, cluster_id, pid = broker.port, broker.cluster_id, broker.pid
        broker.restart()
        assert (broker.port, broker.is_running()) == (port, True)
        assert broker.cluster_id != cluster_id
        assert broker.pid != pid


def test_start_on_a_taken_port_fails_with_the_broker_log() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = TansuBroker(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address in use"):
            broker.start()
        assert not broker.is_running()


def test_stop_leaves_no_process_even_when_paused() -> None:
    broker = TansuBroker()
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.pause()
    broker.stop()
    assert not broker.is_running()
    assert gone(pid)
    broker.stop()  # a second stop is harmless


def test_broker_dies_with_a_killed_parent() -> None:
    script = (
        "import sys, time\n"
        "from shared.infra.tansu import TansuBroker\n"
        "b = TansuBroker(); b.start(); b.pause()\n"
        "print(b.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not gone(pid)
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(pid), f"tansu {pid} outlived its parent"
