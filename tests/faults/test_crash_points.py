"""A crash at each named point between store, publish and ack (shared/crashpoints.py): the
service exits there as kill -9 would, comes back unarmed, and every job still ends `done`,
generated once per tier except by the process that died before storing."""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack

import orjson
import pytest
import pytest_asyncio

from shared.client import Client
from shared.crashpoints import CRASH_EXIT_CODE
from shared.schemas import Job, JobState
from tests.faults.harness import fault_settings
from tests.faults.processes import cluster, double_work

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# point -> (the service that crashes, the plan's r and d that send jobs through that point)
POINTS = {
    "router.after_record": ("router", 0.2, 0.2),
    "router.after_publish": ("router", 0.2, 0.2),
    "light.after_claim": ("light", 0.0, 0.0),
    "light.after_store": ("light", 0.0, 0.0),
    "light.after_publish": ("light", 0.0, 0.5),
    "judge.after_verdict": ("judge", 0.0, 0.5),
    "judge.after_publish": ("judge", 0.0, 1.0),
    "heavy.after_claim": ("heavy", 1.0, 0.0),
    "heavy.after_store": ("heavy", 0.0, 1.0),
}
JOBS = 6


async def wait_exit(process, timeout_s: float) -> int | None:
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        if (code := process.poll()) is not None:
            return code
        await asyncio.sleep(0.1)
    return None


class Clusters:
    """One cluster per plan (r, d) in turn, shared by the points that need it: the cases run in the
    order of their plan, so a cluster is stopped when the first case of the next plan asks."""

    def __init__(self) -> None:
        self.plan: tuple[float, float] | None = None
        self.stack = AsyncExitStack()
        self.client: Client | None = None
        self.running = None

    async def serving(self, r: float, d: float):
        if self.plan != (r, d):
            await self.stack.aclose()
            settings = fault_settings(plan_r=r, plan_d=d, heartbeat_s=0.5)
            self.client = await Client.open(settings)
            self.stack.push_async_callback(self.client.close)
            self.running = await self.stack.enter_async_context(cluster(settings, self.client))
            self.plan = (r, d)
        return self.client, self.running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clusters():
    shared = Clusters()
    try:
        yield shared
    finally:
        await shared.stack.aclose()


@pytest.mark.parametrize("point", sorted(POINTS, key=lambda point: (POINTS[point][1:], point)))
async def test_a_crash_at_each_point_loses_and_repeats_nothing(point, clusters):
    victim, r, d = POINTS[point]
    client, running = await clusters.serving(r, d)
    child = running.children[victim]
    running.kill(victim, signal.SIGTERM)  # armed only now: the warm-up job has passed
    child.env["HADIS_CRASH_AT"] = point
    try:
        running.start(victim)
        crashed_pid = child.process.pid
        since = await client.store.last_event_id()
        jobs = [Job(prompt=f"crash test {i}: a lighthouse on a cliff", seed=i, slo_s=120) for i in range(JOBS)]
        for job in jobs:
            await client.submit(job)
        code = await wait_exit(child.process, timeout_s=60)
        assert code == CRASH_EXIT_CODE, f"{victim} did not crash at {point} (exit {code})"
    finally:  # unarmed again, whatever happened: the next point shares this cluster
        del child.env["HADIS_CRASH_AT"]
        if child.process.poll() is None:  # armed but did not crash
            running.kill(victim)
        running.start(victim)
    finished = await client.store.wait_many([job.job_id for job in jobs], since, timeout_s=120)
    records = [await client.status(job.job_id) for job in jobs]
    events = [event for _, event in await client.store.read_events(since, count=10_000)]
    for event in events:
        event.pop("transition", None)
    alive = {name: c.process.poll() is None for name, c in running.children.items()}
    assert len(finished) == JOBS, [(r.job_id, r.state) if r else None for r in records]
    assert all(record.state is JobState.done for record in records), \
        [(r.job_id, r.state, r.error) for r in records if r.state is not JobState.done]
    assert all(alive.values()), alive
    assert double_work(events, {crashed_pid}) == [], orjson.dumps(events).decode()[:4000]


async def test_a_crash_after_recording_a_dead_letter_records_it_once():
    """controller.after_dead_letter: the dead letter's `failed` record is written, the message is
    not acked. Redelivered to the restarted controller, it changes nothing and is acked."""
    settings = fault_settings(heartbeat_s=0.5)
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            child = running.children["controller"]
            running.kill("controller", signal.SIGTERM)
            child.env["HADIS_CRASH_AT"] = "controller.after_dead_letter"
            running.start("controller")
            # A job without a prompt: the router records it failed (422) and dead-letters it.
            await client.bus.publish(client.bus.queues.requests, orjson.dumps({"job_id": "dead-letter-1"}))
            code = await wait_exit(child.process, timeout_s=60)
            assert code == CRASH_EXIT_CODE, f"the controller did not crash (exit {code})"
            del child.env["HADIS_CRASH_AT"]
            running.start("controller")
            give_up_at = time.monotonic() + 60
            while await client.bus.depth(client.bus.queues.dead_watch) or \
                    await client.bus.consumers(client.bus.queues.dead_watch) == 0:
                assert time.monotonic() < give_up_at, "the dead letter was not settled"
                await asyncio.sleep(0.2)
            record = await client.status("dead-letter-1")
            alive = all(c.process.poll() is None for c in running.children.values())
    finally:
        await client.close()
    assert record is not None and record.state is JobState.failed and record.error.startswith("422")
    assert [t.state for t in record.history].count(JobState.failed) == 1
    assert alive
