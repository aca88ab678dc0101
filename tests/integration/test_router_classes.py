"""The router with both service classes, against the real RabbitMQ and Redis: a batch job is not
scored; it goes to its tier's batch queue (the tier of the plan's batch placement, by its own
draw), is recorded `routed` with its tier and its priority, and is no arrival of the controller's
demand; an interactive job beside it goes the usual way."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.policies import class_engine
from shared.schemas import Job, JobState, Tier
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


async def routed(store, job_ids: list[str], timeout_s: float = 30.0) -> list:
    give_up_at = time.monotonic() + timeout_s
    while True:
        records = [await store.get(job_id) for job_id in job_ids]
        if all(record is not None and record.state is JobState.routed for record in records):
            return records
        assert time.monotonic() < give_up_at, [record.state if record else None for record in records]
        await asyncio.sleep(0.1)


async def test_a_batch_job_goes_to_its_tiers_batch_queue_recorded_with_its_priority():
    settings = make_settings(profile="paper-l40s-x10", backend="emulated", judge_backend="emulated")
    async with running_stack(settings, services=("router",)) as stack:
        plan = await stack.set_plan(light_model="sd35-large-turbo", heavy_model="sd35-medium", light_gpus=1,
                                    heavy_gpus=1, assignment={"g0": "light", "g1": "heavy"}, batch_heavy=0.5)
        batch = [Job(prompt=f"a catalogue image {i}", priority="batch") for i in range(24)]
        interactive = Job(prompt="a person waits for this")
        await stack.submit_many([*batch, interactive])
        records = await routed(stack.store, [job.job_id for job in batch])
        (waiting,) = await routed(stack.store, [interactive.job_id])
        queues = stack.bus.queues
        depths = await stack.bus.depths()
        assert (await stack.store.get(interactive.job_id)).priority == "interactive"

    expected = {job.job_id: class_engine.batch_route(job.job_id, job.quality, plan) for job in batch}
    for record in records:
        assert record.priority == "batch" and record.tier == expected[record.job_id]
        assert record.router_score is None and record.plan_version == plan.version
    heavy = sum(tier is Tier.heavy for tier in expected.values())
    assert 0 < heavy < len(batch)  # both tiers at batch_heavy 0.5 (24 draws)
    assert depths[queues.batch(Tier.heavy)] == heavy and depths[queues.batch(Tier.light)] == len(batch) - heavy
    assert depths[queues.tier(waiting.tier)] == 1 and waiting.router_score is not None
    assert depths[queues.tier(Tier.light)] + depths[queues.tier(Tier.heavy)] == 1


async def test_batch_jobs_are_no_arrivals_of_the_controllers_demand():
    settings = make_settings()
    async with running_stack(settings, services=("router",)) as stack:
        batch = [Job(prompt=f"thumbnail {i}", priority="batch") for i in range(30)]
        interactive = [Job(prompt=f"now {i}") for i in range(3)]
        await stack.submit_many([*batch, *interactive])
        await routed(stack.store, [job.job_id for job in [*batch, *interactive]])
        assert await stack.store.arrivals() == 3
        assert await stack.store.batch_arrivals() == 30
        assert (await stack.store.batch_backlog(time.time())).total == 30
