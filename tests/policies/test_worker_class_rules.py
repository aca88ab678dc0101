"""The worker's class rules: which class a batch is formed from (shared/batching.py ClassCollectors
over classes.next_class) and when batch-class batches ahead are stopped for an interactive job
(engine.batch_class_yields, engine.interactive_free_at), which the simulator calls too."""

from __future__ import annotations

import asyncio

import pytest

from shared.batching import ClassCollectors
from shared.policies.engine import InFlight, batch_class_yields, interactive_free_at


async def test_interactive_jobs_waiting_are_taken_before_batch_ones():
    collectors = ClassCollectors()
    for index in range(3):
        collectors.batch.put(f"b{index}")
    collectors.interactive.put("i0")
    assert await collectors.take(4, max_wait_s=0.01) == ("interactive", ["i0"])
    assert await collectors.take(2, max_wait_s=0.01) == ("batch", ["b0", "b1"])


async def test_a_gpu_reserved_for_batch_takes_batch_first():
    collectors = ClassCollectors()
    collectors.interactive.put("i0")
    collectors.batch.put("b0")
    assert await collectors.take(4, max_wait_s=0.01, batch_first=lambda: True) == ("batch", ["b0"])


async def test_a_batch_class_batch_stops_filling_when_an_interactive_job_arrives():
    """The batch wait must not make an interactive job wait for batch ones."""
    collectors = ClassCollectors()
    collectors.batch.put("b0")
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, collectors.interactive.put, "i0")
    started = loop.time()
    assert await collectors.take(4, max_wait_s=5.0) == ("batch", ["b0"])
    assert loop.time() - started < 1.0
    assert await collectors.take(4, max_wait_s=0.01) == ("interactive", ["i0"])


async def test_an_interactive_batch_fills_within_its_wait_and_idle_gives_none():
    collectors = ClassCollectors()
    loop = asyncio.get_running_loop()
    collectors.interactive.put("i0")
    loop.call_later(0.02, collectors.batch.put, "b0")
    loop.call_later(0.04, collectors.interactive.put, "i1")
    assert await collectors.take(2, max_wait_s=1.0) == ("interactive", ["i0", "i1"])
    assert await collectors.take(2, max_wait_s=0.01) == ("batch", ["b0"])
    assert await collectors.take(2, max_wait_s=0.01, idle_timeout_s=0.01) is None


def test_the_gpu_is_free_of_interactive_work_when_its_interactive_batches_end():
    # Running: batch-class until 14; queued: interactive of 3 s (ends 17), batch-class (ends 21).
    ahead = [InFlight("batch", 14.0), InFlight("interactive", 17.0), InFlight("batch", 21.0)]
    assert interactive_free_at(10.0, ahead) == pytest.approx(13.0)
    assert interactive_free_at(10.0, [InFlight("interactive", 12.0), InFlight("batch", 16.0)]) == pytest.approx(12.0)
    assert interactive_free_at(10.0, []) == 10.0


def test_batch_class_batches_stop_for_a_job_they_would_make_late_that_can_make_it_alone():
    ahead = [InFlight("batch", 14.0), InFlight("batch", 18.0)]  # now 10: both end at 18
    # A 4 s interactive batch due at 16: late behind them (22), in time alone (14): stop. (Whether
    # one in time behind them stops them too is classes.should_yield's to say, not asserted here.)
    assert batch_class_yields("step", 10.0, ahead, 4.0, 16.0)
    # Due at 13: late even alone: run on (stopping only loses work).
    assert not batch_class_yields("step", 10.0, ahead, 4.0, 13.0)
    # finish mode, a GPU reserved for batch, nothing of the batch class ahead: never.
    assert not batch_class_yields("finish", 10.0, ahead, 4.0, 16.0)
    assert not batch_class_yields("step", 10.0, ahead, 4.0, 16.0, batch_first=True)
    assert not batch_class_yields("step", 10.0, [InFlight("interactive", 18.0)], 4.0, 16.0)


def test_an_interactive_batch_ahead_counts_when_judging_a_stop():
    # Interactive until 15, batch-class until 19: a 4 s batch due at 20.5 is late behind both
    # (23) and in time once the batch-class one stops (19): stop; due at 18.5, late either way: no.
    ahead = [InFlight("interactive", 15.0), InFlight("batch", 19.0)]
    assert batch_class_yields("step", 10.0, ahead, 4.0, 20.5)
    assert not batch_class_yields("step", 10.0, ahead, 4.0, 18.5)
