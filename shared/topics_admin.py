"""`python -m shared.topics_admin [--check]`: create every topic with the configured partition count,
replication factor and topic settings, then verify them. The deployments' topic job runs it before the
services start, so that no topic is born with a broker's defaults (7-day retention would break replay).

Exit status: 0 when every topic exists with at least the configured partitions, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from pydantic import Field

from shared.config import KafkaSettings
from shared.topics import all_topics_with_dead_letters

TOPIC_ALREADY_EXISTS = 36


class TopicSettings(KafkaSettings):
    """The topic shape, read from the same `KAFKA_*` variables as the services."""

    min_insync_replicas: int = Field(
        default=0, ge=0, description="0: replication factor - 1 (2 of 3), so one broker may be down"
    )
    retention_ms: int = Field(default=-1, description="-1 keeps the log forever: replay reads from 0")

    def topic_configs(self) -> dict[str, str]:
        configs = {
            "retention.ms": str(self.retention_ms),
            "retention.bytes": "-1",
            "cleanup.policy": "delete",
            # A BatchQueued of 5,000 recipients can pass Kafka's 1 MB default.
            "max.message.bytes": str(self.max_request_size),
        }
        if self.replication_factor > 1:
            isr = self.min_insync_replicas or self.replication_factor - 1
            configs["min.insync.replicas"] = str(isr)
        return configs


@dataclass(frozen=True)
class TopicState:
    name: str
    wanted: int
    found: int  # 0: missing

    @property
    def ok(self) -> bool:
        return self.found >= self.wanted


def plan_topics(settings: TopicSettings, topics: Sequence[str]) -> list[NewTopic]:
    configs = settings.topic_configs()
    return [
        NewTopic(t, settings.partitions, settings.replication_factor, topic_configs=dict(configs))
        for t in topics
    ]


def compare(wanted: int, found: Mapping[str, int], topics: Sequence[str]) -> list[TopicState]:
    """Topics with more partitions than configured are fine (partitions are never shrunk); fewer are
    reported, because consumer replicas beyond the partition count sit idle."""
    return [TopicState(t, wanted, found.get(t, 0)) for t in topics]


async def partition_counts(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, int]:
    described = await admin.describe_topics(list(topics))
    return {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}


async def create_topics(settings: TopicSettings, topics: Sequence[str]) -> list[str]:
    """Create the missing topics; returns their names. Raises the broker's error for a topic it refused
    (an impossible replication factor, say), unlike a silent `create_topics` response."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in plan_topics(settings, topics) if t.name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        for topic, code, message in response.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):  # another job or service created it meanwhile
                raise for_code(code)(f"cannot create {topic}: {message}")
        return [t.name for t in missing]
    finally:
        await admin.close()


async def check_topics(settings: TopicSettings, topics: Sequence[str]) -> list[TopicState]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        return compare(settings.partitions, await partition_counts(admin, topics), topics)
    finally:
        await admin.close()


async def run(settings: TopicSettings, *, check_only: bool) -> int:
    topics = all_topics_with_dead_letters()
    if not check_only:
        created = await create_topics(settings, topics)
        for name in created:
            print(
                f"created {name}: {settings.partitions} partitions, "
                f"replication factor {settings.replication_factor}"
            )
    states = await check_topics(settings, topics)
    for s in states:
        verdict = "ok" if s.ok else ("MISSING" if s.found == 0 else "TOO FEW PARTITIONS")
        print(f"{s.name:<20} partitions {s.found:>3} (configured {s.wanted}) {verdict}")
    return 0 if all(s.ok for s in states) else 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.topics_admin", description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify only; create nothing")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(run(TopicSettings(), check_only=args.check)))


if __name__ == "__main__":
    main()
