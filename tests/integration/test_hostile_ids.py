"""Ids aimed at another job's keys, and dead letters that cannot be recorded: each ends at its own
key (or is refused, 422, and dead-lettered), job X is untouched, and the controller settles every
dead letter once, without a loop (it was a hot loop: 26,000 log lines a minute on WRONGTYPE)."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from shared import metrics
from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


def parked() -> float:
    return sum(sample.value for family in metrics.REGISTRY.collect() if family.name == "hadis_dead_letters_parked"
               for sample in family.samples if sample.name.endswith("_total"))


async def settled(stack, queue: str, timeout_s: float = 20.0) -> None:
    """The queue holds nothing, ready or unacked."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        if await stack.bus.depth(queue) == 0:
            await asyncio.sleep(1.0)
            if await stack.bus.depth(queue) == 0:
                return
        assert time.monotonic() < give_up_at, f"{queue} still holds messages"
        await asyncio.sleep(0.2)


async def test_hostile_ids_end_at_their_own_keys_and_the_controller_goes_idle():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.1)
    async with running_stack(settings) as stack:
        queues, store = stack.bus.queues, stack.store
        parked_before = parked()
        # "X" is a job without a prompt (422 at its own key); then ids that aim at X's keys.
        await stack.bus.publish(queues.requests, orjson.dumps({"job_id": "X"}))
        for hostile in ("X:history", "X:light", "Xb:light", "X\n"):
            await stack.bus.publish(queues.requests, orjson.dumps({"job_id": hostile, "prompt": "a cat"}))
        good = Job(prompt="a red bicycle")
        await stack.client.submit(good)
        assert (await stack.client.wait(good.job_id, 60)).state is JobState.done
        record = await stack.client.wait("X", 30)
        assert record is not None and record.state is JobState.failed and record.error.startswith("422")
        raw = store._redis
        assert await raw.type(store.job_key("X")) == b"hash"
        assert await raw.type(f"{store.job_key('X')}:history") == b"list"
        assert not await raw.exists(store.job_key("Xb"), store.image_key("X"), store.image_key("Xb"))
        await settled(stack, queues.dead_watch)
        # Every hostile message was dead-lettered; those without a readable id are parked, once.
        assert parked() - parked_before == 4
        await asyncio.sleep(3)
        assert parked() - parked_before == 4, "the controller is handling the same dead letters again"
        assert await stack.bus.depth(queues.dead) >= 5
