"""TimeAlignment against a stand-in consumer: what is held, where its partition is rewound to, when it is
resumed, and that a stalled leader never holds the follower for longer than `max_hold_s`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from shared.broker import TimeAlignment

LEADER, FOLLOWER = "sms.outcomes", "delivery.reports"
L0, F0, F1 = TopicPartition(LEADER, 0), TopicPartition(FOLLOWER, 0), TopicPartition(FOLLOWER, 1)


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclass
class Consumer:
    """What TimeAlignment asks of an AIOKafkaConsumer."""

    ends: dict[TopicPartition, int]
    positions: dict[TopicPartition, int]
    sought: dict[TopicPartition, int] = field(default_factory=dict)
    paused: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)


def consumer(leader_position: int) -> Consumer:
    return Consumer(ends={L0: 10, F0: 100, F1: 100}, positions={L0: leader_position, F0: 0, F1: 0})


async def test_follower_records_past_the_leader_are_held_from_the_first_one_on() -> None:
    a, c = TimeAlignment(FOLLOWER, LEADER), consumer(leader_position=3)
    poll = [Rec(LEADER, 0, 2, 1_000), Rec(FOLLOWER, 0, 0, 900), Rec(FOLLOWER, 0, 1, 1_100),
            Rec(FOLLOWER, 0, 2, 950), Rec(FOLLOWER, 1, 0, 1_000)]  # fmt: skip
    kept = await a.split(poll, c)  # type: ignore[arg-type]
    assert kept == [poll[0], poll[1], poll[4]]  # offset 2 of F0 comes after a held one: held too
    assert c.sought == {F0: 1}
    assert c.paused == {F0}
    # The leader passes 1,100: F0 is resumed (its records are fetched again from offset 1).
    assert await a.split([Rec(LEADER, 0, 3, 1_200)], c) == [Rec(LEADER, 0, 3, 1_200)]  # type: ignore[arg-type]
    assert c.paused == set()
    assert not a.held


async def test_nothing_is_held_once_the_leader_is_caught_up() -> None:
    a, c = TimeAlignment(FOLLOWER, LEADER), consumer(leader_position=10)
    poll = [Rec(LEADER, 0, 9, 1_000), Rec(FOLLOWER, 0, 0, 5_000)]
    assert await a.split(poll, c) == poll  # type: ignore[arg-type]
    assert c.paused == set()


async def test_a_leader_behind_that_handed_nothing_over_holds_everything_until_the_watchdog() -> None:
    a, c = TimeAlignment(FOLLOWER, LEADER, max_hold_s=0.05), consumer(leader_position=0)
    assert await a.split([Rec(FOLLOWER, 1, 5, 1)], c) == []  # type: ignore[arg-type]
    assert c.sought == {F1: 5}
    assert c.paused == {F1}
    await asyncio.sleep(0.1)  # the leader never delivers: the hold ends anyway
    assert c.paused == set()
    assert not a.held
