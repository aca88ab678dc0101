"""Internal hand-offs that cannot be made: a job that already has a light image is served it when
the next hop's queue refuses the message (it used to fail), and a feeder turn that fails is retried
(it used to end the feeder silently, leaving a green heartbeat over a stopped tier)."""

from __future__ import annotations

import pytest

from services.worker import TierWorker
from shared.errors import Overloaded
from shared.schemas import Job, JobState, Tier
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration

QUEUE_BOUND = 100  # the smallest HADIS_QUEUE_MAX_LENGTH


def settings(**overrides):
    return make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.1,
                         queue_max_length=QUEUE_BOUND, **overrides)


async def fill(stack, queue: str) -> None:
    """Publish until the queue refuses (a quorum queue takes one past its bound)."""
    for index in range(QUEUE_BOUND + 10):
        try:
            await stack.bus.publish(queue, b'{"filler": %d}' % index)
        except Overloaded:
            return
    raise AssertionError(f"{queue} took more than {QUEUE_BOUND + 10} messages")


async def served_light(stack, job: Job, reason: str) -> None:
    record = await stack.client.wait(job.job_id, 60)
    assert record is not None and record.state is JobState.done, record
    assert record.tier is Tier.light and reason in record.history[-1].detail
    assert await stack.store.get_image(job.job_id) and await stack.store.get_image(job.job_id, "light") is None


async def test_a_full_judge_queue_serves_the_light_image():
    async with running_stack(settings(plan_r=0.0, plan_d=0.5), services=("controller", "router", "light")) as stack:
        await fill(stack, stack.bus.queues.judge)
        job = Job(prompt="a red bicycle")
        await stack.client.submit(job)
        await served_light(stack, job, "the judge's queue is full")


async def test_a_full_heavy_queue_serves_the_light_image():
    async with running_stack(settings(plan_r=0.0, plan_d=1.0),
                             services=("controller", "router", "light", "judge")) as stack:
        await fill(stack, stack.bus.queues.tier(Tier.heavy))
        job = Job(prompt="a red bicycle")
        await stack.client.submit(job)
        await served_light(stack, job, "the heavy queue is full")


async def test_a_failed_feeder_turn_is_retried(monkeypatch):
    original, failures = TierWorker.feed_once, []

    async def fails_once(self, admitted):
        if not failures:
            failures.append(self.tier)
            raise RuntimeError("injected: one turn of the feeder fails")
        return await original(self, admitted)

    monkeypatch.setattr(TierWorker, "feed_once", fails_once)
    async with running_stack(settings(plan_r=0.0, plan_d=0.0)) as stack:
        jobs = [Job(prompt=f"a red bicycle {index}") for index in range(4)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs], timeout_s=60)
    assert failures, "the injected failure did not happen"
    assert all(record.state is JobState.done for record in records)
