"""The plan watcher stops when its service stops, even when the store's client swallows the cancel
(shared/plans.py): a watcher that polled on hung the test loop's close in CI for 300 s."""

from __future__ import annotations

import asyncio

from shared.plans import PlanWatcher
from tests.helpers import make_settings


class SwallowingStore:
    """A store whose get_plan swallows a cancel that lands in it, as redis-py's client can."""

    def __init__(self) -> None:
        self.reads = 0
        self.inside = False

    async def get_plan(self):
        self.reads += 1
        self.inside = True
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # swallowed
        finally:
            self.inside = False
        return None


async def test_a_stopped_watcher_polls_no_more_even_when_its_cancel_was_swallowed():
    store = SwallowingStore()
    watcher = PlanWatcher(store, make_settings(plan_poll_s=0.01))  # type: ignore[arg-type]
    await watcher.start()
    await asyncio.sleep(0.2)
    task = watcher._task
    assert task is not None
    while not store.inside:
        await asyncio.sleep(0)  # until the watcher is inside a read: the cancel lands there
    await watcher.stop()
    reads = store.reads
    await asyncio.sleep(0.3)
    assert task.done() and store.reads <= reads + 1, (task, store.reads, reads)
