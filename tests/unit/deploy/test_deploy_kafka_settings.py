"""Real-Kafka settings are configuration: the `KAFKA_*` variables a deployment sets reach the producer that
FastStream builds, and the topic job's plan. No broker: the producer is captured as it is constructed."""

from __future__ import annotations

from typing import Any

import aiokafka
import pytest

from shared.broker import make_broker
from shared.config import ServiceSettings
from shared.topics import all_topics_with_dead_letters
from shared.topics_admin import TopicSettings, compare, plan_topics

CLUSTER = {
    "DATABASE_URL": "postgresql://smsflow@db/smsflow",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9092,kafka-2:9092",
    "KAFKA_ENABLE_IDEMPOTENCE": "true",
    "KAFKA_ACKS": "all",
    "KAFKA_COMPRESSION_TYPE": "zstd",
    "KAFKA_LINGER_MS": "20",
    "KAFKA_PARTITIONS": "12",
    "KAFKA_REPLICATION_FACTOR": "3",
}


class ProducerBuilt(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("producer constructed")
        self.kwargs = kwargs


def _capture(**kwargs: Any) -> None:
    raise ProducerBuilt(kwargs)


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CLUSTER.items():
        monkeypatch.setenv(name, value)


async def producer_kwargs(settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What FastStream hands to `aiokafka.AIOKafkaProducer` when the service's broker connects."""
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", _capture)
    broker = make_broker(settings, "sender")
    with pytest.raises(ProducerBuilt) as built:
        await broker.connect()
    return built.value.kwargs


@pytest.mark.usefixtures("cluster_env")
async def test_cluster_settings_reach_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = await producer_kwargs(ServiceSettings(), monkeypatch)

    assert kwargs["bootstrap_servers"] == ["kafka-0:9092", "kafka-1:9092", "kafka-2:9092"]
    assert kwargs["enable_idempotence"] is True
    assert kwargs["acks"] == "all"
    assert kwargs["compression_type"] == "zstd"
    assert kwargs["linger_ms"] == 20
    assert kwargs["client_id"] == "sender"


@pytest.mark.usefixtures("cluster_env")
async def test_aiokafka_accepts_the_cluster_producer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    real = aiokafka.AIOKafkaProducer
    kwargs = await producer_kwargs(ServiceSettings(), monkeypatch)
    producer = real(**kwargs)  # constructing connects to nothing; it validates the combination
    assert producer._txn_manager is not None  # idempotence on: a transaction manager assigns sequence numbers


async def test_local_defaults_keep_idempotence_off_and_compression_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in CLUSTER:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", CLUSTER["DATABASE_URL"])
    kwargs = await producer_kwargs(ServiceSettings(), monkeypatch)
    assert kwargs["enable_idempotence"] is False  # Tansu rejects InitProducerId
    assert kwargs["acks"] == "all"
    assert kwargs["compression_type"] == "lz4"


async def test_no_compression_leaves_the_option_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", CLUSTER["DATABASE_URL"])
    monkeypatch.setenv("KAFKA_COMPRESSION_TYPE", "none")
    kwargs = await producer_kwargs(ServiceSettings(), monkeypatch)
    assert "compression_type" not in kwargs or kwargs["compression_type"] is None


@pytest.mark.usefixtures("cluster_env")
def test_topic_plan_uses_partitions_replication_and_durable_settings() -> None:
    settings = TopicSettings()
    plan = {t.name: t for t in plan_topics(settings, all_topics_with_dead_letters())}

    assert set(plan) == set(all_topics_with_dead_letters())
    for topic in plan.values():
        assert topic.num_partitions == 12
        assert topic.replication_factor == 3
        assert topic.topic_configs["min.insync.replicas"] == "2"
        assert topic.topic_configs["retention.ms"] == "-1"
        assert int(topic.topic_configs["max.message.bytes"]) >= settings.max_request_size


def test_single_broker_plan_sets_no_in_sync_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "1")
    (topic,) = plan_topics(TopicSettings(), ["sms.batches"])
    assert "min.insync.replicas" not in topic.topic_configs


def test_explicit_in_sync_minimum_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "5")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "3")
    (topic,) = plan_topics(TopicSettings(), ["sms.batches"])
    assert topic.topic_configs["min.insync.replicas"] == "3"


def test_fewer_partitions_than_configured_is_reported_and_more_is_fine() -> None:
    states = compare(12, {"a": 6, "b": 12, "c": 24}, ["a", "b", "c", "d"])
    assert [(s.name, s.found, s.ok) for s in states] == [
        ("a", 6, False),
        ("b", 12, True),
        ("c", 24, True),
        ("d", 0, False),
    ]
