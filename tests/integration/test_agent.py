"""The agent keeps one worker process per emulated GPU serving the tier the plan assigns, moves
workers when the plan changes under load, and no job is lost on the way."""

from __future__ import annotations

import asyncio
import time

import pytest

from services import agent
from shared.experiments.class_runner import Counters, fetch_metrics
from shared.ports import free_port_base
from shared.schemas import Job, JobState
from shared.service import serve
from tests.helpers import eventually, make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


async def wait_for_workers(store, light: int, heavy: int, timeout_s: float = 60.0) -> list[dict]:
    give_up_at = time.monotonic() + timeout_s
    while True:
        workers = await store.workers()
        tiers = [worker["tier"] for worker in workers]
        if tiers.count("light") == light and tiers.count("heavy") == heavy:
            return workers
        assert time.monotonic() < give_up_at, f"workers {tiers}, wanted {light} light and {heavy} heavy"
        await asyncio.sleep(0.2)


async def test_agent_reconciles_workers_with_the_plan_under_load():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10",
                             time_scale=0.5, emulated_gpus=4, plan_light_gpus=3, plan_heavy_gpus=1,
                             heartbeat_s=0.3, plan_light_batch=4, plan_heavy_batch=2)
    async with running_stack(settings, services=("controller", "router", "judge")) as stack:
        stopping = asyncio.Event()
        agent_task = asyncio.create_task(serve("agent", agent.main, settings, stopping))
        try:
            workers = await wait_for_workers(stack.store, light=3, heavy=1)
            assert {worker["gpu"] for worker in workers} == set(settings.owned_gpus())
            plan = await stack.store.get_plan()
            assert sorted(plan.assignment) == sorted(settings.owned_gpus())

            jobs = [Job(prompt=f"a lighthouse in a storm, number {i}") for i in range(40)]
            await stack.submit_many(jobs)
            await stack.set_plan(r=0.5, light_gpus=1, heavy_gpus=3)
            await wait_for_workers(stack.store, light=1, heavy=3)
            records = await stack.wait_all([job.job_id for job in jobs], timeout_s=120)
            assert all(record.state is JobState.done for record in records)
            for record in records:
                assert [t.state for t in record.history].count(JobState.done) == 1
        finally:
            stopping.set()
            done, _ = await asyncio.wait([agent_task], timeout=120)
            assert done, f"the agent did not stop within 120 s; workers: {await stack.store.workers()}"
        assert await stack.store.workers() == []


async def test_a_moved_worker_finishes_a_batch_longer_than_its_grace(monkeypatch):
    """A worker moved to the other tier finishes the batch it runs, even one longer than the stop's
    grace: the agent kills it only once its committed batches (its heartbeat's busy_until) are
    overdue. Before, a fixed grace (30 s + 10) cut an sd35-large batch of 2 (48.6 s) short in a
    real-time run; its jobs came back too late and were shed."""
    killed = []
    monkeypatch.setattr("services.agent.log.warning", lambda event, **fields: killed.append(fields)
                        if event == "worker_killed" else None)
    # sd35-large: 2.7 s x 5 = 13.5 s a batch, against a kill 0.5 + 10 s after the stop.
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=5.0,
                             emulated_gpus=2, plan_light_gpus=1, plan_heavy_gpus=1, plan_r=1.0, plan_d=0.0,
                             plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large", plan_heavy_batch=1,
                             slo_s=120.0, heartbeat_s=1.0, shutdown_grace_s=0.5)
    async with running_stack(settings, services=("controller", "router", "judge")) as stack:
        stopping = asyncio.Event()
        agent_task = asyncio.create_task(serve("agent", agent.main, settings, stopping))
        try:
            await wait_for_workers(stack.store, light=1, heavy=1)
            job = Job(prompt="a lighthouse in a storm, on a GPU about to move")
            await stack.client.submit(job)
            async def claimed() -> bool:
                record = await stack.store.get(job.job_id)
                return record is not None and record.state is JobState.generating

            async def committed() -> bool:
                return any(worker["tier"] == "heavy" and worker.get("busy_until", 0) > time.time()
                           for worker in await stack.store.workers())

            await eventually("claim of the job by the heavy worker", claimed, timeout_s=20)
            # The case is a commitment the agent can see: the heavy worker's heartbeat names the batch's
            # end. (CI: with heartbeats every 0.3 s, TTL 0.9 s, a loaded machine let the record lapse,
            # the agent saw no commitment and killed the worker at its grace, and the job was redone.)
            await eventually("heartbeat of the heavy worker naming its batch's end", committed, timeout_s=10)
            plan = await stack.store.get_plan()
            swapped = {gpu: ("light" if tier == "heavy" else "heavy") for gpu, tier in plan.assignment.items()}
            await stack.store.publish_plan({**plan.model_dump(exclude={"version", "created_at"}),
                                            "assignment": swapped})
            (done,) = await stack.wait_all([job.job_id], timeout_s=90)
        finally:
            stopping.set()
            finished, _ = await asyncio.wait([agent_task], timeout=120)
            assert finished, "the agent did not stop within 120 s"
    assert done.state is JobState.done and done.model == "sd35-large", done.history
    assert [step.state for step in done.history].count(JobState.generating) == 1, done.history  # not redone
    assert killed == []


async def worker_counters(port: int, timeout_s: float = 30.0) -> Counters:
    """A worker's counters, once its metrics port answers."""
    give_up_at = time.monotonic() + timeout_s
    while (page := await fetch_metrics(port)) is None:
        assert time.monotonic() < give_up_at, f"no metrics on port {port}"
        await asyncio.sleep(0.2)
    return Counters.parse(page)


async def test_a_moved_workers_successor_carries_its_busy_time_on():
    """A GPU moved to the other tier gets a new worker process, whose busy-time counters start from
    the old one's final totals (shared/busy_carry.py): the batches the old one ran after the last
    read, just before it exited, are not lost to a reader (hadis experiment's busy time). Fails with
    counters that restart from 0 at every move."""
    base = free_port_base(3)
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.2,
                             emulated_gpus=2, plan_light_gpus=1, plan_heavy_gpus=1, plan_d=1.0, heartbeat_s=0.3,
                             metrics_port=base)
    ports = [base + 1, base + 2]
    async with running_stack(settings, services=("controller", "router", "judge")) as stack:
        stopping = asyncio.Event()
        agent_task = asyncio.create_task(serve("agent", agent.main, settings, stopping))
        try:
            await wait_for_workers(stack.store, light=1, heavy=1)
            jobs = [Job(prompt=f"a lighthouse in a storm, number {i}") for i in range(12)]
            await stack.submit_many(jobs)
            await stack.wait_all([job.job_id for job in jobs], timeout_s=120)
            before = [await worker_counters(port) for port in ports]
            assert all(sum(counters.busy.values()) > 0 for counters in before), before
            plan = await stack.store.get_plan()
            swapped = {gpu: ("light" if tier == "heavy" else "heavy") for gpu, tier in plan.assignment.items()}
            await stack.store.publish_plan({**plan.model_dump(exclude={"version", "created_at"}),
                                            "assignment": swapped})

            async def replaced() -> bool:
                now = [await worker_counters(port) for port in ports]
                return all(new.started != old.started for new, old in zip(now, before, strict=True))

            await eventually("a new worker process on each GPU", replaced, timeout_s=60)
            after = [await worker_counters(port) for port in ports]
        finally:
            stopping.set()
            done, _ = await asyncio.wait([agent_task], timeout=120)
            assert done, "the agent did not stop within 120 s"
    for old, new in zip(before, after, strict=True):
        assert new.carries_on(old), (old, new)
        assert new.carried is not None and new.carried.busy == pytest.approx(old.busy), (old, new)
