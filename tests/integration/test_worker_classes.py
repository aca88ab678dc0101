"""The worker's service classes on the real broker and store, the emulated backend sleeping step by
step (services/classes_intake.py): a batch-class batch running when an interactive job arrives that
would be late behind it is stopped at a step, and its jobs end done later, each generated and
stored once; with batch_yield=finish it runs to its end; a batch job's light image is final (no
judge)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from shared import metrics
from shared.schemas import Job, JobRecord, JobState, Task, Tier
from shared.store import Change
from tests.helpers import make_settings
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration

HEAVY_S = 3.0  # a heavy batch (of one or two), in 30 steps of 0.1 s


def classes_profile(directory: Path) -> str:
    path = directory / "classes.json"
    heavy = {"name": "slow-heavy", "family": "sd", "steps": 30, "guidance": 0.0, "resolution": 64,
             "latency_ms": {str(size): HEAVY_S * 1000 for size in (1, 2, 4)}}
    light = {"name": "slow-light", "family": "sd", "steps": 4, "guidance": 0.0, "resolution": 64,
             "latency_ms": {str(size): 200.0 for size in (1, 2, 4)}}
    path.write_bytes(orjson.dumps({"name": "classes", "models": {"slow-heavy": heavy, "slow-light": light},
                                   "default_light": "slow-light", "default_heavy": "slow-heavy"}))
    return str(path)


def settings_for(directory: Path, batch_yield: str):
    # The light tier's model is the heavy one's: a job too late for heavy is shed, not moved.
    return make_settings(backend="emulated", judge_backend="emulated", profile=classes_profile(directory),
                         plan_light_model="slow-heavy", plan_heavy_model="slow-heavy", plan_light_batch=1,
                         plan_heavy_batch=1, batch_wait_ms=5, batch_yield=batch_yield, slo_s=300.0)


async def submit(stack: Stack, tier: Tier, prompt: str, slack_s: float, priority: str = "interactive") -> Job:
    """A job recorded `routed` to `tier` and published to its class's queue, as the router does."""
    job = Job(prompt=prompt, priority=priority)
    deadline = job.submitted_at + slack_s
    record = {**job.record_fields(deadline), "tier": tier.value}
    assert (await stack.store.apply(Change(job.job_id, JobState.routed, record, create=True,
                                           passing=(JobState.queued,)))).applied
    queues = stack.bus.queues
    queue = queues.batch(tier) if priority == "batch" else queues.tier(tier)
    await stack.bus.publish(queue, Task(job=job, deadline=deadline, tier=tier), message_id=job.job_id)
    return job


async def until_step(stack: Stack, job: Job, step: int, timeout_s: float = 30.0) -> None:
    give_up_at = time.monotonic() + timeout_s
    while True:
        record = await stack.store.get(job.job_id)
        if record is not None and record.state is JobState.generating and (record.step or 0) >= step:
            return
        assert time.monotonic() < give_up_at, record
        await asyncio.sleep(0.05)


def states(record: JobRecord) -> list[str]:
    return [transition.state.value for transition in record.history]


def yields(tier: str) -> float:
    return metrics.REGISTRY.get_sample_value("hadis_batch_yields_total", {"tier": tier}) or 0.0


def lost_s(tier: str) -> float:
    return metrics.REGISTRY.get_sample_value("hadis_batch_yield_lost_seconds_total", {"tier": tier}) or 0.0


async def test_a_batch_class_batch_gives_way_at_a_step_and_its_jobs_end_done_later(tmp_path):
    before, lost_before = yields("heavy"), lost_s("heavy")
    async with running_stack(settings_for(tmp_path, "step"), services=("heavy",)) as stack:
        first = await submit(stack, Tier.heavy, "a catalogue photo of a chair", 300.0, "batch")
        second = await submit(stack, Tier.heavy, "a catalogue photo of a table", 300.0, "batch")
        await until_step(stack, first, 3)
        # Behind the running batch (about 2.7 s left) and the one queued (3 s), a 3 s batch ends
        # about 8.7 s from now: too late for 6 s; alone it ends in 3 s.
        urgent = await submit(stack, Tier.heavy, "a person waits for this", 6.0)
        done = await stack.wait_all([urgent.job_id, first.job_id, second.job_id], timeout_s=60)
        for job in (first, second):
            assert (await stack.client.image(job.job_id)).startswith(b"\x89PNG")
    interactive, *batch = done
    assert interactive.state is JobState.done and interactive.history[-1].at <= urgent.submitted_at + 6.0
    for record in batch:
        assert record.state is JobState.done, states(record)
        assert states(record).count("done") == 1
        assert record.history[-1].at > interactive.history[-1].at  # ran again after the interactive job
    stopped = [record for record in batch if "routed" in states(record)[states(record).index("generating"):]]
    assert stopped, [states(record) for record in batch]  # at least the running one was handed back
    assert yields("heavy") - before >= 1
    assert lost_s("heavy") - lost_before > 0


async def test_with_batch_yield_finish_a_batch_class_batch_runs_to_its_end(tmp_path):
    before = yields("heavy")
    async with running_stack(settings_for(tmp_path, "finish"), services=("heavy",)) as stack:
        first = await submit(stack, Tier.heavy, "a catalogue photo of a lamp", 300.0, "batch")
        second = await submit(stack, Tier.heavy, "a catalogue photo of a rug", 300.0, "batch")
        await until_step(stack, first, 3)
        urgent = await submit(stack, Tier.heavy, "a person waits for this too", 6.0)
        interactive, *batch = await stack.wait_all([urgent.job_id, first.job_id, second.job_id], timeout_s=60)
    for record in batch:
        assert record.state is JobState.done
        assert states(record) == ["queued", "routed", "generating", "done"], states(record)
    # Behind both batch-class batches it could not end in time: shed (the light tier's model is
    # the heavy one's, so there is nowhere else to go).
    assert interactive.state is JobState.expired, states(interactive)
    assert yields("heavy") == before


async def test_a_batch_job_on_the_light_tier_is_done_without_the_judge(tmp_path):
    settings = settings_for(tmp_path, "step").model_copy(update={"plan_light_model": "slow-light"})
    async with running_stack(settings, services=("light",)) as stack:
        batch = await submit(stack, Tier.light, "a thumbnail of a boat", 300.0, "batch")
        interactive = await submit(stack, Tier.light, "a boat someone waits for", 300.0)
        # 1.4 s alone; more than 30 s once in CI, its three lanes at once (stack.wait_all's default bound).
        (record,) = await stack.wait_all([batch.job_id])
        assert record.state is JobState.done and record.tier is Tier.light and record.model == "slow-light"
        assert "judging" not in states(record), states(record)
        assert (await stack.client.image(batch.job_id)).startswith(b"\x89PNG")
        # An interactive light image still goes to the judge (none runs here: it waits `judging`).
        give_up_at = time.monotonic() + 30
        while (other := await stack.store.get(interactive.job_id)) is None or other.state is not JobState.judging:
            assert time.monotonic() < give_up_at, other
            await asyncio.sleep(0.05)
        assert await stack.bus.depth(stack.bus.queues.judge) == 1


async def steps_seen(stack: Stack, job: Job, timeout_s: float = 60.0) -> list[int]:
    """The steps the job's record reports while it generates, until it ends."""
    seen: list[int] = []
    give_up_at = time.monotonic() + timeout_s
    while (record := await stack.store.get(job.job_id)) is None or not record.state.terminal:
        assert time.monotonic() < give_up_at, record
        if record is not None and record.state is JobState.generating and record.step:
            seen.append(record.step)
        await asyncio.sleep(0.02)
    return seen


async def test_a_paused_batch_class_batch_resumes_from_its_step_and_loses_nothing(tmp_path):
    """batch_yield=pause: the batch-class batch running when an interactive job arrives is paused at
    its next step, the interactive job runs, and the batch goes on from the step it had reached, on
    the same claim (never handed back, its steps never restarted); nothing counted lost."""
    before, lost_before = yields("heavy"), lost_s("heavy")
    async with running_stack(settings_for(tmp_path, "pause"), services=("heavy",)) as stack:
        first = await submit(stack, Tier.heavy, "a catalogue photo of a vase", 300.0, "batch")
        await until_step(stack, first, 6)
        urgent = await submit(stack, Tier.heavy, "a person waits for this one", 6.0)
        watching = asyncio.create_task(steps_seen(stack, first))
        interactive, batch = await stack.wait_all([urgent.job_id, first.job_id], timeout_s=60)
        seen = await watching
    assert interactive.state is JobState.done and interactive.history[-1].at <= urgent.submitted_at + 6.0
    assert batch.state is JobState.done and batch.history[-1].at > interactive.history[-1].at
    assert states(batch) == ["queued", "routed", "generating", "done"], states(batch)  # one claim, kept
    assert seen and min(seen) >= 6, seen  # it went on from its step
    assert yields("heavy") - before >= 1
    assert lost_s("heavy") == lost_before


async def test_a_batch_paused_again_and_again_leaves_the_worker_its_pipeline(tmp_path):
    """A stopped batch gives its pipeline slot back at once (the interactive batch is admitted behind
    it while it runs to its next step), and holds one again once resumed: three pauses of one batch,
    then more work, all done. A resumed batch that held no slot gave none back at its end: after
    two pauses the worker had no slot left and admitted nothing more."""
    async with running_stack(settings_for(tmp_path, "pause"), services=("heavy",)) as stack:
        batch_job = await submit(stack, Tier.heavy, "a catalogue photo of a vase", 300.0, "batch")
        step = 3
        for index in range(3):
            await until_step(stack, batch_job, step)
            urgent = await submit(stack, Tier.heavy, f"a person waits for this one, number {index}", 6.0)
            (done,) = await stack.wait_all([urgent.job_id], timeout_s=30)
            assert done.state is JobState.done, done.history
            step = ((await stack.store.get(batch_job.job_id)) or done).step or 0
            step += 2  # running again, past the step it paused at
        later = await submit(stack, Tier.heavy, "one more after the pauses", 60.0)
        records = await stack.wait_all([batch_job.job_id, later.job_id], timeout_s=60)
    assert [record.state for record in records] == [JobState.done, JobState.done], [r.history for r in records]


async def test_a_light_gpu_serves_heavy_batch_work_with_the_heavy_model_beside_its_own(tmp_path):
    """batch_colocate: a light worker, with no light work, takes the heavy tier's batch jobs and
    makes them with the heavy model (the record says heavy tier, heavy model); without it they wait
    for a heavy GPU (none runs here)."""
    settings = settings_for(tmp_path, "pause").model_copy(update={"plan_light_model": "slow-light"})
    async with running_stack(settings, services=("light",)) as stack:
        job = await submit(stack, Tier.heavy, "a catalogue photo of a kettle", 300.0, "batch")
        (record,) = await stack.wait_all([job.job_id], timeout_s=60)
        assert record.state is JobState.done and record.tier is Tier.heavy and record.model == "slow-heavy"
        assert (await stack.client.image(job.job_id)).startswith(b"\x89PNG")
    alone = settings.model_copy(update={"batch_colocate": False})
    async with running_stack(alone, services=("light",)) as stack:
        job = await submit(stack, Tier.heavy, "a catalogue photo of a teapot", 300.0, "batch")
        await asyncio.sleep(3.0)
        record = await stack.store.get(job.job_id)
        assert record is not None and record.state is JobState.routed
        assert await stack.bus.depth(stack.bus.queues.batch(Tier.heavy)) == 1
