"""Overload: three times the capacity for a while. Admission control sheds by deadline with a
clear state (`expired`) instead of letting the queues grow without bound; nothing is lost."""

from __future__ import annotations

import asyncio

import pytest

from shared.client import Client
from shared.schemas import JobState
from tests.faults.harness import fault_settings
from tests.faults.processes import Load, cluster

pytestmark = [pytest.mark.integration]

RATE_QPS, SECONDS, SLO_S = 60.0, 6.0, 3.0


async def sample_depths(client: Client, samples: list[int], stop: asyncio.Event) -> None:
    queues = client.bus.queues
    while not stop.is_set():
        depths = await client.bus.depths()
        samples.append(sum(depths[name] for name in queues.work))
        await asyncio.sleep(0.25)


async def test_overload_sheds_by_deadline_and_keeps_queues_bounded():
    # The x10 profile at full time: light ~22 jobs/s, heavy ~8.5 jobs/s; r=0.2, d=0.3 -> ~19 jobs/s.
    settings = fault_settings(time_scale=1.0, slo_s=SLO_S, plan_r=0.2, plan_d=0.3)
    client = await Client.open(settings)
    depths: list[int] = []
    stop = asyncio.Event()
    try:
        async with cluster(settings, client):
            sampler = asyncio.create_task(sample_depths(client, depths, stop))
            load = Load(client, rate_qps=RATE_QPS)
            await load.run(seconds=SECONDS)
            outcome = await load.outcome(timeout_s=60)
            stop.set()
            await sampler
            drained = sum((await client.bus.depths()).values())
    finally:
        await client.close()
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.count(JobState.failed) == 0, str(outcome)
    assert outcome.count(JobState.expired) > 0 and outcome.count(JobState.done) > 0, str(outcome)
    assert max(depths) <= RATE_QPS * (SLO_S + 2), f"queues grew to {max(depths)}"
    assert drained == 0
    for record in outcome.records:
        if record.state is JobState.expired:
            assert "deadline" in record.error
