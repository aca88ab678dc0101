"""Following the controller's plan: every service polls the plan's version and switches
to a newer one without a restart. Until a controller has published one, the static
plan from the service's own settings (version 0) applies, so work never stalls on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shared import metrics
from shared.logging import get_logger
from shared.schemas import Plan
from shared.settings import Settings
from shared.store import Store

log = get_logger(__name__)

PlanListener = Callable[[Plan, Plan], Awaitable[None]]


class PlanWatcher:
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._poll_s = settings.plan_poll_s
        self.current: Plan = settings.static_plan(version=0)
        self._listeners: list[PlanListener] = []
        self._task: asyncio.Task | None = None
        self._stopped = False

    def on_change(self, listener: PlanListener) -> None:
        self._listeners.append(listener)

    async def refresh(self) -> Plan:
        plan = await self._store.get_plan()
        if plan is not None and plan.version != self.current.version:
            previous, self.current = self.current, plan
            log.info("plan_applied", version=plan.version, light=plan.light_model, heavy=plan.heavy_model,
                     r=plan.r, d=plan.d, light_batch=plan.light_batch, heavy_batch=plan.heavy_batch)
            for listener in self._listeners:
                await listener(previous, plan)
        metrics.observe_plan(self.current)
        return self.current

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="plan-watcher")

    async def _poll(self) -> None:
        """Until stopped. The flag, not only the cancel: a cancel that lands inside the store's read
        can be swallowed below it, and a loop that relied on it polled on after its service stopped,
        and hung the test loop's close that cancelled it again (CI: a 300 s teardown, `plan-watcher`
        the one task left after the stack stopped)."""
        while not self._stopped:
            await asyncio.sleep(self._poll_s)
            if self._stopped:
                return
            try:
                await self.refresh()
            except Exception as error:  # fail static: keep serving the current plan
                log.warning("plan_refresh_failed", error=str(error) or type(error).__name__)

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)  # bounded: a cancellation can be swallowed
