"""A plan that changes a tier's model while the worker holds admitted batches: each batch runs with
the model it was admitted for, and the swap comes between batches. Admission timed the batch with
that model; run with another, it ends at another time (trace_1_6qps in real time: a heavy job
admitted for sd35-medium ran with sd35-large, and ended 1-3 s past its deadline)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest

from services.worker import TierWorker
from shared.schemas import Job, JobState, Task, Tier
from shared.store import Change
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


@asynccontextmanager
async def released(hold: asyncio.Event):
    """The held worker goes on when the block ends, whatever happened in it (else it cannot stop)."""
    try:
        yield
    finally:
        hold.set()


async def test_a_batch_runs_with_the_model_it_was_admitted_for(monkeypatch):
    # sd35-medium 1.3 s a batch of one, sd35-large 2.7 s (the 10x profile); one heavy GPU.
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=60.0,
                             plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-medium", plan_r=1.0,
                             plan_d=0.0, plan_light_batch=1, plan_heavy_batch=1, batch_wait_ms=5)
    # The worker's loop is held after the first batch, so that the third is admitted (for
    # sd35-medium) before the plan changes and taken from the feeder after it has.
    hold, original, ran = asyncio.Event(), TierWorker.generate_and_hand_off, []

    async def held_after_first(self, batch, generator):
        await original(self, batch, generator)
        ran.append(batch)
        if len(ran) == 1:
            await hold.wait()

    monkeypatch.setattr(TierWorker, "generate_and_hand_off", held_after_first)
    async with running_stack(settings, services=("heavy",)) as stack, released(hold):
        store, bus = stack.store, stack.bus

        async def publish(job: Job) -> None:
            deadline = job.submitted_at + 60.0
            record = {**job.record_fields(deadline), "tier": Tier.heavy.value}
            assert (await store.apply(Change(job.job_id, JobState.routed, record, create=True,
                                             passing=(JobState.queued,)))).applied
            await bus.publish(bus.queues.tier(Tier.heavy), Task(job=job, deadline=deadline, tier=Tier.heavy),
                              message_id=job.job_id)

        jobs = [Job(prompt=f"a lighthouse on a cliff, batch {i}") for i in range(3)]
        for job in jobs:
            await publish(job)
        for _ in range(200):  # all three claimed: the third once the first has run
            states = [(await store.get(job.job_id)).state for job in jobs]
            if all(state in (JobState.generating, JobState.done) for state in states):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the heavy worker did not claim the three jobs")
        await stack.set_plan(heavy_model="sd35-large")
        hold.set()
        later = Job(prompt="a lighthouse on a cliff, after the swap")
        await publish(later)
        records = await stack.wait_all([job.job_id for job in [*jobs, later]], timeout_s=60)
    assert all(record.state is JobState.done for record in records)
    assert [record.model for record in records] == ["sd35-medium"] * 3 + ["sd35-large"]
    assert [batch.model for batch in ran] == ["sd35-medium"] * 3 + ["sd35-large"]
