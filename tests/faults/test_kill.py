"""kill -9 each service in the middle of its work under steady load: every job still reaches
a terminal state, and each has exactly one visible result.

The five victims share one cluster (a cold start of five processes was a third of each case): each
case kills its victim under a load of its own and restarts it, and requires every service alive
after, so the next case starts from a cluster that serves again."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from shared.client import Client
from shared.schemas import JobState
from tests.faults.harness import fault_on, fault_settings
from tests.faults.processes import cluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def serving():
    settings = fault_settings()
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            yield client, running
    finally:
        await client.close()


@pytest.mark.parametrize("victim", ["light", "heavy", "judge", "router", "controller"])
async def test_kill_9_under_load_loses_nothing(victim, serving):
    client, running = serving

    async def kill_and_restart(running) -> None:
        running.kill(victim)
        await asyncio.sleep(1)
        running.start(victim)

    run = await fault_on(client, running, kill_and_restart, rate_qps=6, seconds=8, fault_after_s=3)
    outcome = run.outcome
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == run.submitted, str(outcome)
    assert run.services_alive, "a service died"
