"""kill -9 each service in the middle of its work under steady load: every job still reaches
a terminal state, and each has exactly one visible result."""

from __future__ import annotations

import asyncio

import pytest

from shared.client import Client
from shared.schemas import JobState
from tests.helpers import make_settings
from shared.faults import Load, cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def fault_settings(**overrides):
    # time_scale 2: a light batch of 4 takes 0.36 s, a heavy batch of 2 0.47 s, so a kill lands mid-batch.
    values = dict(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=2.0,
                  plan_r=0.2, plan_d=0.2, log_format="json")
    return make_settings(**{**values, **overrides})


@pytest.mark.parametrize("victim", ["light", "heavy", "judge", "router", "controller"])
async def test_kill_9_under_load_loses_nothing(victim):
    settings = fault_settings()
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            load = Load(client, rate_qps=6)
            loading = asyncio.create_task(load.run(seconds=8))
            await asyncio.sleep(3)
            running.kill(victim)
            await asyncio.sleep(1)
            running.start(victim)
            await loading
            outcome = await load.outcome()
    finally:
        await client.close()
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == len(load.jobs), str(outcome)
