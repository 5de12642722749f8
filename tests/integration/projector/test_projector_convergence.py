"""Property: every interleaving of the topics — shuffled across partitions, duplicated in the log, polls
delivered twice, any poll size — converges to the same read model (equal checksums), and that model holds
the counts an independent reference computes from the log."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from projector import projection
from projector.app import MIGRATIONS
from projector.store import schemas
from projector.synthetic import CampaignShape, Log, add_campaign, add_tenant, interleave
from projector.synthetic import Counter as Seq

from shared import db
from shared.broker import BatchConsumer
from shared.events import BatchResolved, decode
from shared.infra.postgres import resolve_server
from shared.topics import SMS_OUTCOMES
from tests.integration.projector.projector_harness import campaign_counts, reference

SCHEMAS = ("conv_a", "conv_b")


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = await resolve_server(tmp_path_factory.mktemp("pg"))
    name = f"t_projector_conv_{secrets.token_hex(4)}"
    url = await server.create_database(name)
    for schema in SCHEMAS:
        await db.apply_migrations(url, schema, MIGRATIONS)
    yield url
    await server.drop_database(name)
    server.stop()


shapes = st.builds(
    CampaignShape,
    recipients=st.integers(1, 40),
    batch_size=st.sampled_from([1, 3, 7, 16]),
    reject_share=st.sampled_from([0.0, 0.2, 0.5]),
    failed_batch_share=st.sampled_from([0.0, 0.2]),
    ambiguous_batch_share=st.sampled_from([0.0, 0.2]),
    deferred_batch_share=st.sampled_from([0.0, 0.15]),
    max_reports=st.integers(0, 3),
    unknown_reports=st.integers(0, 2),
    clicks=st.integers(0, 6),
    unsubscribes=st.integers(0, 2),
    retry_failed=st.booleans(),
    resolve_ambiguous=st.booleans(),
    resume_deferred=st.booleans(),
)


def build_log(seed: int, campaigns: list[CampaignShape], duplicate_share: float) -> Log:
    rng = random.Random(seed)
    log = Log(partitions=3)
    tenants = [add_tenant(log, rng) for _ in range(2)]
    recipient_ids, messages = Seq(), Seq()
    for i, shape in enumerate(campaigns):
        add_campaign(log, rng, tenants[i % 2], shape, recipient_ids, messages)
    log.duplicate(rng, duplicate_share)
    return log


async def project(url: str, schema: str, polls: list[list[Any]]) -> dict[str, schemas.TableSum]:
    """Feed polls through the live consumer's code path (positions, decode, apply) into `schema`."""
    pool = await db.create_pool(url, schema, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"TRUNCATE {', '.join(schemas.READ_MODELS)}, consumer_position")
        consumer = BatchConsumer(None, lambda: pool, projection.CONSUMER, projection.apply)  # type: ignore[arg-type]
        for poll in polls:
            await consumer.process(poll)
        async with pool.acquire() as conn:
            return await schemas.checksums(conn, schema)
    finally:
        await pool.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    campaigns=st.lists(shapes, min_size=1, max_size=3),
    duplicate_share=st.sampled_from([0.0, 0.1, 0.3]),
    max_poll=st.integers(1, 60),
    redeliver=st.sampled_from([0.0, 0.2]),
)
def test_every_interleaving_converges_to_the_reference_read_model(
    database: str,
    seed: int,
    campaigns: list[CampaignShape],
    duplicate_share: float,
    max_poll: int,
    redeliver: float,
) -> None:
    log = build_log(seed, campaigns, duplicate_share)
    polls = interleave(log, random.Random(seed + 1), max_poll=max_poll, redeliver=redeliver)

    async def run() -> tuple[Any, Any, Any]:
        in_order = await project(database, "conv_a", [log.in_order()])
        shuffled = await project(database, "conv_b", polls)
        return in_order, shuffled, await campaign_counts(database, "conv_b")

    in_order, shuffled, counts = asyncio.run(run())
    assert shuffled == in_order
    assert counts == reference(log)


# A stored counter past the total, a negative one, or more final reports than accepted messages.
OVERSHOOT = """SELECT id::text, status, total, accepted, rejected, processing, ambiguous, delivered, delivery_failed
               FROM campaigns
               WHERE accepted + rejected + processing + ambiguous > total
                  OR least(accepted, rejected, processing, ambiguous, delivered, delivery_failed) < 0
                  OR delivered + delivery_failed > accepted"""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    campaigns=st.lists(shapes, min_size=1, max_size=2),
    max_poll=st.integers(1, 25),
)
# One record per poll: every claim is seen apart from its outcome, and a retry is always exercised.
@example(seed=1, campaigns=[CampaignShape(recipients=12, batch_size=3, reject_share=0.5, retry_failed=True)],
         max_poll=1)  # fmt: skip
# ... and a retry paused and resumed: the resumed run's members still hold their failed result.
@example(seed=3, campaigns=[CampaignShape(recipients=30, batch_size=2, reject_share=0.5, deferred_batch_share=0.15,
                                          retry_failed=True, resume_deferred=True)], max_poll=1)  # fmt: skip
def test_between_polls_the_read_model_lags_but_never_overshoots(
    database: str, seed: int, campaigns: list[CampaignShape], max_poll: int
) -> None:
    """After every poll, in any interleaving, each campaign counts at most its total: a batch claimed or
    sent before its run's enqueue was read waits for it, and a retry's claim does not count recipients
    that are still counted under their failed first attempt."""
    log = build_log(seed, campaigns, 0.0)
    polls = interleave(log, random.Random(seed + 1), max_poll=max_poll)

    async def run() -> list[dict[str, Any]]:
        pool = await db.create_pool(database, "conv_b", max_size=2)
        try:
            async with pool.acquire() as conn:
                await conn.execute(f"TRUNCATE {', '.join(schemas.READ_MODELS)}, consumer_position")
            consumer = BatchConsumer(None, lambda: pool, projection.CONSUMER, projection.apply)  # type: ignore[arg-type]
            for n, poll in enumerate(polls):
                await consumer.process(poll)
                async with pool.acquire() as conn:
                    if bad := await conn.fetch(OVERSHOOT):
                        return [{"poll": n, **dict(r)} for r in bad]
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM parked_outcomes") == 0
            return []
        finally:
            await pool.close()

    assert asyncio.run(run()) == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    campaigns=st.lists(shapes, min_size=1, max_size=3),
    max_poll=st.integers(1, 40),
)
def test_any_cut_of_the_log_converges_whatever_the_interleaving(
    database: str, seed: int, campaigns: list[CampaignShape], max_poll: int
) -> None:
    """The log cut at any position per partition (as a replay compares with the live read models while
    traffic flows: outcomes whose run is past the cut, reports whose send is) gives the same read models
    read in order or in any interleaving, parked outcomes and reports included."""
    rng = random.Random(seed)
    log = build_log(seed, campaigns, 0.0)
    for tp, stream in log.streams.items():
        log.streams[tp] = stream[: rng.randint(0, len(stream))]
    polls = interleave(log, random.Random(seed + 1), max_poll=max_poll)

    async def run() -> tuple[Any, Any]:
        return await project(database, "conv_a", [log.in_order()]), await project(database, "conv_b", polls)

    in_order, shuffled = asyncio.run(run())
    assert shuffled == in_order


def test_the_reference_sees_what_the_generator_made(database: str) -> None:
    """Guard for the property above: the generated logs do exercise reports, rejections and engagement."""
    shape = CampaignShape(
        recipients=40, batch_size=7, reject_share=0.3, max_reports=3, clicks=5, unsubscribes=2
    )
    counts = next(iter(reference(build_log(7, [shape], 0.2)).values()))
    assert counts["status"] == "completed"
    assert counts["accepted"] > 0
    assert counts["rejected"] > 0
    assert counts["delivered"] > 0
    assert counts["clicks"] == 5
    assert counts["accepted"] + counts["rejected"] == 40


def test_a_repeated_resolution_never_undoes_a_later_runs_result(database: str) -> None:
    """A resolution published again after a retry of its rejected recipients (an outbox relay's repeat) is
    read after the retry's results in order, but before them when the retry waits for its run: either way
    the recipients keep the retry's result."""
    shape = CampaignShape(recipients=4, batch_size=2, reject_share=1.0, ambiguous_batch_share=1.0,
                          resolve_ambiguous=True, retry_failed=True, max_reports=0)  # fmt: skip
    log = build_log(5, [shape], 0.0)
    (outcomes_tp,) = [tp for tp in log.streams if tp[0] == SMS_OUTCOMES]
    stream = log.streams[outcomes_tp]
    first_run = decode(stream[0][1])[1].run_token  # type: ignore[union-attr]
    stream += [
        r for r in stream if isinstance(e := decode(r[1])[1], BatchResolved) and e.run_token == first_run
    ]
    records = log.records()
    outcomes_first = [
        records[outcomes_tp],
        [r for tp, rs in records.items() if tp != outcomes_tp for r in rs],
    ]

    async def run() -> tuple[Any, Any, list[str]]:
        in_order = await project(database, "conv_a", [log.in_order()])
        pool = await db.create_pool(database, "conv_a", max_size=1)
        try:
            batches = [r["batch_id"] for r in await pool.fetch("SELECT batch_id FROM recipients")]
        finally:
            await pool.close()
        return in_order, await project(database, "conv_b", outcomes_first), batches

    in_order, shuffled, batches = asyncio.run(run())
    assert len(batches) == 4
    assert not [b for b in batches if first_run in b]  # every recipient holds the retry's result
    assert shuffled == in_order
