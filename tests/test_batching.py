import asyncio
import time

from shared.batching import BatchCollector


async def test_take_fills_up_to_max_size_without_waiting():
    collector = BatchCollector()
    for i in range(5):
        collector.put(i)
    assert await collector.take(3, max_wait_s=10) == [0, 1, 2]
    assert collector.waiting == 2


async def test_take_waits_at_most_the_bound_for_a_partial_batch():
    collector = BatchCollector()
    collector.put("a")
    started = time.monotonic()
    assert await collector.take(4, max_wait_s=0.05) == ["a"]
    assert time.monotonic() - started < 1.0


async def test_take_collects_late_arrivals_within_the_bound():
    collector = BatchCollector()
    collector.put("a")
    asyncio.get_running_loop().call_later(0.01, collector.put, "b")
    assert await collector.take(2, max_wait_s=1.0) == ["a", "b"]


async def test_take_returns_empty_when_idle_and_drain_hands_back():
    collector = BatchCollector()
    assert await collector.take(2, max_wait_s=0.01, idle_timeout_s=0.01) == []
    collector.put("x")
    assert collector.drain_nowait() == ["x"]
