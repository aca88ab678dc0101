"""Disturbances of the control plane's view mid-run, the whole stack (controller with the hadis
policy, router, judge, and an agent running a worker per emulated GPU) under load:

- a noisy neighbour keeps a core busy for a minute: the agent may miss its registrations and the
  heartbeats may come late (issue 19's run 1 collapsed exactly here: a plan with 0 GPUs, every
  worker restarted);
- the agent is stopped (SIGSTOP) for 30 s: its registration lapses and nothing renews it.

The data plane fails static: no plan published during or after withdraws a GPU, no job is lost,
and the jobs submitted while the agent is quiet meet the SLO as the ones before did."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from shared.client import Client
from shared.schemas import Plan
from shared.supervisor import Child, stop_all
from tests.faults.harness import fault_settings
from tests.faults.processes import Load, Outcome, warm_up

pytestmark = [pytest.mark.integration]

GPUS = 4
HOG_S = 60.0
QUIET_S = 30.0
SLO_S = 6.0


@dataclass
class Watched:
    """A stack's plans, sampled twice a second while a disturbance runs, and its load's outcome."""

    client: Client
    children: dict[str, Child]
    plans: list[Plan] = field(default_factory=list)
    load: Load | None = None
    outcome: Outcome | None = None

    def assigned(self) -> list[int]:
        return [len(plan.assignment) for plan in self.plans]

    async def run(self, seconds: float, disturb: Callable[[], Awaitable[None]], rate_qps: float = 2.0) -> None:
        """Load for `seconds`, with `disturb()` running 10 s in; plans watched until 10 s after."""
        self.load = Load(self.client, rate_qps=rate_qps)
        loading = asyncio.create_task(self.load.run(seconds=seconds, prefix="disturbed"))
        watching = asyncio.create_task(self.watch(time.monotonic() + seconds + 10))
        await asyncio.sleep(10)
        await disturb()
        await loading
        self.outcome = await self.load.outcome(timeout_s=120)
        await watching

    async def watch(self, until: float) -> None:
        while time.monotonic() < until:
            plan = await self.client.store.get_plan()
            if plan is not None:
                self.plans.append(plan)
            await asyncio.sleep(0.5)


@asynccontextmanager
async def stack() -> AsyncIterator[Watched]:
    # No burst assumed before one is seen: its fading would change the plan (and the models' speed)
    # in the middle of the disturbance, which these tests compare latencies across. Planned for
    # 1.5 x the demand, not 1.1: at 2 jobs/s on 4 GPUs the planner's points carry 2.1-2.4 jobs/s, a
    # structure "for 4.84 qps, the demand rising" (2 submitted) came and went during the quiet agent,
    # and its worst job took 5.7 s of the 6 s SLO on an idle host; CI's busy one expired 6 of them
    # (2026-12-07). With the margin the worst took 3.95 s beside two busy cores. The tests are about
    # the fleet's view, not the planner's headroom.
    settings = fault_settings(controller_policy="hadis", emulated_gpus=GPUS, slo_s=SLO_S, plan_period_s=1.0,
                              plan_min_dwell_s=12.0, time_scale=1.0, burst_prior=0.0, demand_margin=0.5)
    children = {name: Child(name, f"services.{name}", settings.as_env())
                for name in ("controller", "router", "judge", "agent")}
    for child in children.values():
        child.start()
    client = await Client.open(settings)
    try:
        await warm_up(client, timeout_s=120)
        yield Watched(client, children)
    finally:
        stop_all(list(children.values()))
        await client.delete_namespace()
        await client.close()


def assert_failed_static(watched: Watched, what: str) -> None:
    assigned = watched.assigned()
    assert watched.outcome is not None and watched.load is not None
    versions = f"{watched.plans[0].version}..{watched.plans[-1].version}" if watched.plans else "none"
    print(f"{what}: {len(watched.load.jobs)} jobs, {watched.outcome}; plans seen {len(assigned)}, "
          f"GPUs assigned {min(assigned, default=0)}..{max(assigned, default=0)}, versions {versions}")
    assert assigned and min(assigned) == GPUS, sorted(set(assigned))
    assert all(plan.light_gpus + plan.heavy_gpus == GPUS for plan in watched.plans)
    assert watched.outcome.lost == 0, str(watched.outcome)


async def test_a_neighbour_busy_for_a_minute_withdraws_no_gpu():
    hog: subprocess.Popen | None = None

    async def neighbour() -> None:
        nonlocal hog
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one core, a minute
        try:
            await asyncio.sleep(HOG_S)
        finally:
            hog.kill()

    async with stack() as watched:
        try:
            await watched.run(HOG_S + 20, neighbour)
        finally:
            if hog is not None and hog.poll() is None:
                hog.kill()
    assert_failed_static(watched, "neighbour")


async def test_an_agent_quiet_for_30_s_under_load_withdraws_no_gpu_and_delays_no_job():
    """SIGSTOP the agent for 30 s (its registration's TTL is a few seconds): the controller sees no
    agent at all, yet plans with every GPU; the workers serve on. Every job submitted while the agent
    was quiet ends done, and their median latency is within 2 s of the median before.
    The plans are the direct evidence (no GPU withdrawn); the latencies are the users' view of it. A
    second of margin was too tight for CI, where the lanes beside this one moved the median from
    1.82 s to 2.90 s with every plan keeping all four GPUs."""
    stopped: list[tuple[float, float]] = []

    async def quiet() -> None:
        agent = watched.children["agent"].process
        assert agent is not None
        os.kill(agent.pid, signal.SIGSTOP)
        started = time.time()
        try:
            await asyncio.sleep(QUIET_S)
            assert await watched.client.store.agents() == {}  # the controller really lost sight of it
        finally:
            os.kill(agent.pid, signal.SIGCONT)
            stopped.append((started, time.time()))

    async with stack() as watched:
        await watched.run(QUIET_S + 20, quiet)
    assert_failed_static(watched, "quiet agent")
    (begin, end), = stopped
    records = [record for record in watched.outcome.records if record is not None]  # type: ignore[union-attr]
    during = [record for record in records if record.submitted_at is not None and begin <= record.submitted_at <= end]
    before = [record for record in records if record.submitted_at is not None and record.submitted_at < begin]
    assert len(during) >= QUIET_S * 2 * 0.8 and before
    unserved = [(record.job_id, record.state.value) for record in during if record.state.value != "done"]
    median_before = statistics.median(record.latency_s or 0.0 for record in before)
    median_during = statistics.median(record.latency_s or 0.0 for record in during)
    print(f"quiet agent: {len(during)} jobs while quiet, median latency {median_during:.2f} s "
          f"(before: {median_before:.2f} s), worst {max(r.latency_s or 0 for r in during):.2f} s")
    assert not unserved, unserved[:5]
    assert median_during <= median_before + 2.0
