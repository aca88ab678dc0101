"""Collecting deliveries into batches: up to the plan's batch size, waiting at most a short
bound for the batch to fill once its first message has arrived."""

from __future__ import annotations

import asyncio

from shared.bus import Delivery


class BatchCollector:
    def __init__(self) -> None:
        self._pending: asyncio.Queue[Delivery] = asyncio.Queue()

    def put(self, delivery: Delivery) -> None:
        self._pending.put_nowait(delivery)

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
