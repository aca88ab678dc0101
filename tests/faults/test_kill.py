"""kill -9 each service in the middle of its work under steady load: every job still reaches
a terminal state, and each has exactly one visible result."""

from __future__ import annotations

import asyncio

import pytest

from shared.schemas import JobState
from tests.faults.harness import fault_settings, under_load

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("victim", ["light", "heavy", "judge", "router", "controller"])
async def test_kill_9_under_load_loses_nothing(victim):
    async def kill_and_restart(running) -> None:
        running.kill(victim)
        await asyncio.sleep(1)
        running.start(victim)

    run = await under_load(fault_settings(), kill_and_restart, rate_qps=6, seconds=8, fault_after_s=3)
    outcome = run.outcome
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == run.submitted, str(outcome)
