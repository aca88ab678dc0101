"""One fault under a steady load: the services as processes, jobs submitted at a rate, the fault
applied part-way through, and what became of every job."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.client import Client
from shared.settings import Settings
from tests.faults.processes import Cluster, Load, Outcome, cluster
from tests.helpers import make_settings


def fault_settings(**overrides) -> Settings:
    # time_scale 2: a light batch of 4 takes 0.36 s, a heavy batch of 2 0.47 s, so a kill lands mid-batch.
    values = dict(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=2.0,
                  plan_r=0.2, plan_d=0.2, log_format="json")
    return make_settings(**{**values, **overrides})


@dataclass
class FaultRun:
    outcome: Outcome
    submitted: int
    fault_result: Any
    services_alive: bool


async def under_load(settings: Settings, fault: Callable[[Cluster], Awaitable[Any]], *, rate_qps: float,
                     seconds: float, fault_after_s: float, outcome_timeout_s: float = 120.0) -> FaultRun:
    """A cluster of its own for one fault: start it, break it under load, stop it."""
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            return await fault_on(client, running, fault, rate_qps=rate_qps, seconds=seconds,
                                  fault_after_s=fault_after_s, outcome_timeout_s=outcome_timeout_s)
    finally:
        await client.close()


async def fault_on(client: Client, running: Cluster, fault: Callable[[Cluster], Awaitable[Any]], *,
                   rate_qps: float, seconds: float, fault_after_s: float,
                   outcome_timeout_s: float = 120.0) -> FaultRun:
    """One fault under a load of its own on a cluster already serving (one a module may share between
    its cases: the outcome counts only this load's jobs and the events since it began)."""
    load = Load(client, rate_qps=rate_qps)
    loading = asyncio.create_task(load.run(seconds=seconds))
    await asyncio.sleep(fault_after_s)
    fault_result = await fault(running)
    await loading
    outcome = await load.outcome(timeout_s=outcome_timeout_s)
    alive = all(child.process.poll() is None for child in running.children.values())
    return FaultRun(outcome, len(load.jobs), fault_result, alive)
