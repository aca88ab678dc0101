"""Collecting deliveries into batches: up to the plan's batch size, waiting at most a short
bound for the batch to fill once its first message has arrived. A tier worker collects two
service classes (ClassCollectors): each batch is formed from one of them, interactive first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared.bus import Delivery
from shared.policies.classes import next_class
from shared.schemas import Priority


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

    def __init__(self) -> None:
        self.signal = asyncio.Event()
        self.interactive = BatchCollector(self.signal)
        self.batch = BatchCollector(self.signal)

    def of(self, priority: Priority) -> BatchCollector:
        return self.batch if priority == "batch" else self.interactive

    @property
    def waiting(self) -> int:
        return self.interactive.waiting + self.batch.waiting

    async def _arrival(self, timeout_s: float) -> bool:
        """Wait for the next put into either collector (False: none within timeout_s)."""
        self.signal.clear()
        try:
            await asyncio.wait_for(self.signal.wait(), timeout=max(timeout_s, 0.0))
        except TimeoutError:
            return False
        return True

    async def take(self, max_size: int, max_wait_s: float, batch_first: Callable[[], bool] = lambda: False,
                   idle_timeout_s: float = 1.0) -> tuple[Priority, list[Delivery]] | None:
        """The next batch and its class; None when nothing arrived within idle_timeout_s."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + idle_timeout_s
        while (priority := next_class(self.interactive.waiting, self.batch.waiting, batch_first())) is None:
            if not await self._arrival(give_up_at - loop.time()):
                return None
        collector = self.of(priority)
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
        return priority, items

    def drain_nowait(self) -> list[Delivery]:
        return self.interactive.drain_nowait() + self.batch.drain_nowait()
