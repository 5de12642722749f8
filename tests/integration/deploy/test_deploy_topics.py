"""The topic job on a real Kafka-protocol broker: it creates every topic with the configured partitions,
changes nothing the second time, and fails when a topic has fewer partitions than configured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.infra.tansu import TansuBroker
from shared.topics import all_topics_with_dead_letters
from shared.topics_admin import TopicSettings, partition_counts, run

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as b:
        yield b


def settings_for(broker: TansuBroker, partitions: int) -> TopicSettings:
    return TopicSettings(bootstrap_servers=broker.bootstrap, partitions=partitions, replication_factor=1)


async def counts(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await partition_counts(admin, all_topics_with_dead_letters())
    finally:
        await admin.close()


async def test_creates_every_topic_once_with_the_configured_partitions(broker: TansuBroker) -> None:
    settings = settings_for(broker, 4)
    assert await run(settings, check_only=True) == 1  # nothing there yet

    assert await run(settings, check_only=False) == 0
    assert await counts(broker.bootstrap) == dict.fromkeys(all_topics_with_dead_letters(), 4)

    assert await run(settings, check_only=False) == 0  # idempotent: a second job run changes nothing
    assert await counts(broker.bootstrap) == dict.fromkeys(all_topics_with_dead_letters(), 4)


async def test_a_topic_with_fewer_partitions_fails_the_check(
    broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("sms.batches", 2, 1)])
    finally:
        await admin.close()

    assert await run(settings_for(broker, 6), check_only=False) == 1
    report = capsys.readouterr().out
    assert "sms.batches" in report
    assert "TOO FEW PARTITIONS" in report
    assert (await counts(broker.bootstrap))["sms.outcomes"] == 6  # the others were still created


def test_command_line_reads_the_kafka_variables(broker: TansuBroker) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")},
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_PARTITIONS": "3",
        "KAFKA_REPLICATION_FACTOR": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.topics_admin"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created ") == len(all_topics_with_dead_letters())
    check = subprocess.run(
        [sys.executable, "-m", "shared.topics_admin", "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout
    assert "created" not in check.stdout
