"""`hadis status --cluster`: the plan, the agents and their GPUs, which worker serves which tier on
which GPU, and the service classes (docs/classes.md): each class's demand (its arrivals, and their
rate over a short window), the batch backlog by deadline, and where the plan places batch work.

Jobs finished and SLO violations by class are not in the store: they are the services' counters
(hadis_class_jobs_finished_total, hadis_class_slo_violations_total; the dashboard's "Service classes"
row), and the view says so rather than show a partial count."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from shared.policies.classes import Backlog
from shared.schemas import Plan

if TYPE_CHECKING:
    from shared.store import Store

OUTCOMES = ("not kept in the store: Prometheus's hadis_class_jobs_finished_total{priority,state} and "
            "hadis_class_slo_violations_total{priority} (docs/observability.md, Service classes)")


def horizon_label(seconds: float) -> str:
    """30 -> "30s", 120 -> "2m", 3600 -> "1h"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def demand(before: int, after: int | None, window_s: float) -> dict[str, Any]:
    """A class's arrivals so far, and their rate over the window (None without one)."""
    count = after if after is not None else before
    rate = round(max(after - before, 0) / window_s, 3) if after is not None and window_s > 0 else None
    return {"arrivals": count, "arrivals_qps": rate}


def classes_view(plan: Plan | None, before: tuple[int, int], after: tuple[int, int] | None, window_s: float,
                 backlog: Backlog) -> dict[str, Any]:
    """Each class's demand, the batch backlog by deadline and the plan's batch placement. `before` and
    `after`: the (interactive, batch) arrival counters read `window_s` apart (`after` None: no window)."""
    interactive = demand(before[0], after[0] if after else None, window_s)
    batch = demand(before[1], after[1] if after else None, window_s)
    due = {horizon_label(horizon): count for horizon, count in zip(backlog.horizons, backlog.due, strict=True)}
    placement = None
    if plan is not None:
        placement = {"heavy_share": plan.batch_heavy, "light_share": round(1.0 - plan.batch_heavy, 6),
                     "reserved_gpus": len(plan.batch_first), "reserved": sorted(plan.batch_first)}
    return {"interactive": {**interactive, "planned": "its sustained demand (the plan's models, r, d, GPUs)"},
            "batch": {**batch, "backlog": {"not_ended": backlog.total, "due_within": due},
                      "placement": placement},
            "rate_window_s": window_s if after is not None else None, "outcomes": OUTCOMES}


async def arrival_counts(store: Store) -> tuple[int, int]:
    return await store.arrivals(), await store.batch_arrivals()


async def cluster_view(store: Store, rate_window_s: float = 1.0) -> dict[str, Any]:
    """What `hadis status --cluster` prints: the plan, agents, workers and the classes."""
    before = await arrival_counts(store)
    after = None
    if rate_window_s > 0:
        await asyncio.sleep(rate_window_s)
        after = await arrival_counts(store)
    plan = await store.get_plan()
    backlog = await store.batch_backlog(time.time())
    return {"plan": plan.model_dump(mode="json") if plan else None, "agents": await store.agents(),
            "workers": await store.workers(), "classes": classes_view(plan, before, after, rate_window_s, backlog)}
