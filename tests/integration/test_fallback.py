"""A heavy job the heavy tier cannot finish in time is not dropped when a cheaper answer can make
the deadline: an escalated job is served the light image it already has, and a job routed
straight to heavy goes to the light tier."""

from __future__ import annotations

import pytest

from shared.schemas import Job, JobState, Task, Tier
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


def settings_for(**plan):
    # One heavy GPU at 2.7 s a job and a 4 s SLO: the heavy tier can take one job at a time.
    return make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=4.0,
                         plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large", plan_light_batch=1,
                         plan_heavy_batch=1, batch_wait_ms=5, **plan)


async def test_escalated_jobs_the_heavy_tier_cannot_finish_get_their_light_image():
    services = ("router", "light", "heavy", "judge")
    async with running_stack(settings_for(plan_r=0.0, plan_d=1.0), services=services) as stack:
        jobs = [Job(prompt=f"a lighthouse on a cliff, take {i}") for i in range(4)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs], timeout_s=60)
        assert all(record.state is JobState.done for record in records)
        by_heavy = [r for r in records if r.tier is Tier.heavy]
        fallback = [r for r in records if r.history[-1].detail.startswith("the heavy model could not finish")]
        assert by_heavy and fallback
        assert all(r.tier is Tier.light and not r.escalated and r.model == "sd35-large-turbo" for r in fallback)
        assert all(JobState.escalated in [t.state for t in r.history] for r in fallback)
        for record in fallback:
            assert (await stack.client.image(record.job_id)).startswith(b"\x89PNG")


async def test_routed_jobs_the_heavy_tier_cannot_finish_go_to_the_light_tier():
    services = ("router", "light", "heavy", "judge")
    async with running_stack(settings_for(plan_r=1.0, plan_d=0.0), services=services) as stack:
        jobs = [Job(prompt=f"a red bicycle in the rain, take {i}") for i in range(4)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs], timeout_s=60)
        assert all(record.state is JobState.done for record in records)
        assert {r.tier for r in records} == {Tier.heavy, Tier.light}
        rerouted = [r for r in records if r.tier is Tier.light]
        assert all(r.model == "sd35-large-turbo" and not r.escalated for r in rerouted)


async def test_a_job_claimed_by_a_heavy_worker_that_died_is_not_rerouted_and_not_lost():
    """The heavy worker that claimed a job died mid-batch; its message comes back to another heavy
    worker too late for the heavy model. The job cannot go back to the light tier (its record is a
    step past `routed`, so a light worker's claim would be refused as stale and the job never end):
    it is shed, a terminal state. Before the fix it stayed `generating` for ever (3 of 7,733 jobs of
    a proteus run, 1 of 3,931 of a hadis run)."""
    from shared.store import Change

    services = ("light", "heavy")
    async with running_stack(settings_for(plan_r=1.0, plan_d=0.0), services=services) as stack:
        store, bus = stack.client.store, stack.client.bus
        job = Job(prompt="a red bicycle in the rain, claimed by a worker that died")
        deadline = job.submitted_at + 2.0  # heavy (2.7 s) cannot make it; light (0.13 s) could
        record = {**job.record_fields(deadline), "tier": Tier.heavy.value}
        assert (await store.apply(Change(job.job_id, JobState.routed, record, create=True,
                                         passing=(JobState.queued,)))).applied
        claim = Change(job.job_id, JobState.generating, {"tier": Tier.heavy.value}, owner="gpu-gone/4242")
        assert (await store.apply(claim)).applied  # its owner has no liveness key: it died
        task = Task(job=job, deadline=deadline, tier=Tier.heavy)
        await bus.publish(bus.queues.tier(Tier.heavy), task, message_id=job.job_id)
        (ended,) = await stack.wait_all([job.job_id], timeout_s=30)
        assert ended.state is JobState.expired, ended.history
