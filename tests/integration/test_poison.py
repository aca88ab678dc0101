"""A poison job (the model raises on it every time) is retried a bounded number of times, then
dead-lettered with state `failed` and the reason; the jobs batched with it are unaffected."""

from __future__ import annotations

import asyncio

import pytest

from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


async def test_poison_job_is_retried_then_failed_and_others_finish():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10",
                             time_scale=0.1, emulated_fail_pattern="POISON", max_deliveries=3,
                             plan_light_batch=8, batch_wait_ms=200)
    async with running_stack(settings) as stack:
        dead_before = await stack.bus.depth(stack.bus.queues.dead)
        poison = Job(prompt="a POISON apple on a table")
        others = [Job(prompt=f"a green apple on a table, number {i}") for i in range(15)]
        await stack.submit_many([poison, *others])
        records = await stack.wait_all([job.job_id for job in others])
        assert all(record.state is JobState.done for record in records)
        failed = await stack.client.wait(poison.job_id, 60)
        assert failed.state is JobState.failed
        assert failed.error.startswith("424 BackendFailed") and "injected fault" in failed.error
        generating = [t for t in failed.history if t.state is JobState.generating]
        assert len(generating) == settings.max_deliveries
        for _ in range(50):
            if await stack.bus.depth(stack.bus.queues.dead) > dead_before:
                break
            await asyncio.sleep(0.1)
        assert await stack.bus.depth(stack.bus.queues.dead) == dead_before + 1
