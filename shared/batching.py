"""Collecting deliveries into batches: up to the plan's batch size, waiting at most a short
bound for the batch to fill once its first message has arrived. A tier worker collects two
service classes (ClassCollectors): each batch is formed from one of them, interactive first; its
batch-class work comes from a batch it paused, its own batch queue, or the guest tier's
(classes.batch_source)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from shared.bus import Delivery
from shared.policies.classes import batch_source, next_class
from shared.schemas import Priority

# What a batch is taken from: the interactive queue's deliveries, the worker's batch queue's, the
# guest tier's batch queue's (classes.guest_tier), or a batch the worker paused (no deliveries).
Taken = Literal["interactive", "batch", "guest", "paused"]


class BatchCollector:
    def __init__(self, signal: asyncio.Event | None = None) -> None:
        self._pending: asyncio.Queue[Delivery] = asyncio.Queue()
        self.signal = signal  # set at every put: one waiter watches several collectors (ClassCollectors)

    def put(self, delivery: Delivery) -> None:
        self._pending.put_nowait(delivery)
        if self.signal is not None:
            self.signal.set()

    def take_nowait(self, max_size: int) -> list[Delivery]:
        """What is waiting, up to max_size, without waiting for more."""
        items: list[Delivery] = []
        while len(items) < max_size and not self._pending.empty():
            items.append(self._pending.get_nowait())
        return items

    @property
    def waiting(self) -> int:
        return self._pending.qsize()

    async def take(self, max_size: int, max_wait_s: float, idle_timeout_s: float = 1.0) -> list[Delivery]:
        """The next batch; empty when nothing arrived within idle_timeout_s (so the caller can
        look at the plan and at its stop flag)."""
        try:
            first = await asyncio.wait_for(self._pending.get(), timeout=idle_timeout_s)
        except TimeoutError:
            return []
        batch = [first]
        fill_by = asyncio.get_running_loop().time() + max_wait_s
        while len(batch) < max_size:
            if not self._pending.empty():
                batch.append(self._pending.get_nowait())
                continue
            remaining = fill_by - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._pending.get(), timeout=remaining))
            except TimeoutError:
                break
        return batch

    def drain_nowait(self) -> list[Delivery]:
        """Whatever is still waiting (a stopping worker hands it back to the broker)."""
        items = []
        while not self._pending.empty():
            items.append(self._pending.get_nowait())
        return items


class ClassCollectors:
    """A tier worker's two collectors: its tier queue's (interactive) and its batch queue's. Each
    batch is formed from one class, the one shared/policies/classes.next_class names (interactive
    first; batch first on a GPU the plan reserves for it). A batch-class batch stops filling as soon
    as an interactive delivery arrives (on a GPU that takes interactive first): the batch wait must
    never make an interactive job wait for batch ones."""

    def __init__(self, paused: Callable[[], int] = lambda: 0) -> None:
        self.signal = asyncio.Event()
        self.interactive = BatchCollector(self.signal)
        self.batch = BatchCollector(self.signal)
        self.guest = BatchCollector(self.signal)
        self.paused = paused  # how many batch-class batches the worker has paused (wake() when it changes)

    def of(self, priority: Priority, guest: bool = False) -> BatchCollector:
        if guest:
            return self.guest
        return self.batch if priority == "batch" else self.interactive

    def wake(self) -> None:
        """Something a waiting take counts has changed (a batch was paused)."""
        self.signal.set()

    @property
    def waiting(self) -> int:
        return self.interactive.waiting + self.batch.waiting + self.guest.waiting

    def batch_waiting(self) -> int:
        return self.batch.waiting + self.guest.waiting + self.paused()

    async def _arrival(self, timeout_s: float) -> bool:
        """Wait for the next put into either collector (False: none within timeout_s)."""
        self.signal.clear()
        try:
            await asyncio.wait_for(self.signal.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    async def take(self, max_size: int, max_wait_s: float, batch_first: Callable[[], bool] = lambda: False,
                   idle_timeout_s: float = 1.0, guest_size: int | None = None) -> tuple[Taken, list[Delivery]] | None:
        """The next batch and where it comes from (a paused one: no deliveries, the worker holds
        it); None when nothing arrived within idle_timeout_s. A guest batch is of `guest_size`."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + idle_timeout_s
        while (priority := next_class(self.interactive.waiting, self.batch_waiting(), batch_first())) is None:
            if not await self._arrival(give_up_at - loop.time()):
                return None
        taken: Taken = "interactive"
        if priority == "batch":
            source = batch_source(self.paused() > 0, self.batch.waiting, self.guest.waiting)
            if source == "paused":
                return "paused", []
            taken = "guest" if source == "guest" else "batch"
            if taken == "guest" and guest_size:
                max_size = guest_size
        collector = self.of(priority, guest=taken == "guest")
        items = collector.take_nowait(max_size)
        fill_by = loop.time() + max_wait_s
        while len(items) < max_size:
            if priority == "batch" and self.interactive.waiting and not batch_first():
                break  # an interactive job arrived: it does not wait for this batch to fill
            if collector.waiting:
                items += collector.take_nowait(max_size - len(items))
                continue
            if not await self._arrival(fill_by - loop.time()):
                break
        return taken, items

    def drain_nowait(self) -> list[Delivery]:
        return self.interactive.drain_nowait() + self.batch.drain_nowait() + self.guest.drain_nowait()
