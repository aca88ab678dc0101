"""The fleet as the dashboard shows it: each GPU with the tier and model the plan gives it and the ones
its worker reports, the plan, and its last changes with their reasons and switch costs.

A change's *expected* cost is the controller's price of it (shared/policies/transitions.py:
transition, the seconds until its last moving GPU serves again); its *realised* cost is measured here
as the controller measures it (SwitchWatch over the workers' heartbeats): the seconds until every GPU
it moved reported its new tier and model, and the GPU-seconds they served nothing. Only the switches
that happen while the dashboard runs are measured; the others show their expected cost alone."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.policies.transitions import Switch, SwitchWatch, changing_gpus
from shared.schemas import Plan

PLAN_FIELDS = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus", "heavy_gpus")


def plan_view(plan: Plan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"version": plan.version, "light_model": plan.light_model, "heavy_model": plan.heavy_model,
            "r": plan.r, "d": plan.d, "heavy_share": plan.heavy_share, "light_batch": plan.light_batch,
            "heavy_batch": plan.heavy_batch, "light_gpus": plan.light_gpus, "heavy_gpus": plan.heavy_gpus,
            "fid": plan.fid, "created_at": plan.created_at, "reason": plan.reason}


def grid(plan: Plan | None, workers: Sequence[Mapping[str, Any]], agents: Mapping[str, list[str]]) -> list[dict]:
    """One cell per GPU (the plan's, and any an agent registers that the plan does not use): the tier
    and model planned for it, what its worker serves now, and whether the two agree."""
    serving = {str(worker.get("gpu")): worker for worker in workers}
    host_of = {gpu: host for host, gpus in agents.items() for gpu in gpus}
    assignment = dict(plan.assignment) if plan else {}
    cells = []
    for gpu in sorted(set(assignment) | set(host_of) | set(serving)):
        tier = assignment.get(gpu)
        worker = serving.get(gpu, {})
        planned_model = plan.model_for(tier) if plan and tier else None
        state = "idle" if tier is None else "down" if not worker else \
            "serving" if (worker.get("tier"), worker.get("model")) == (tier, planned_model) else "switching"
        cells.append({"gpu": gpu, "host": host_of.get(gpu) or worker.get("host"), "tier": tier,
                      "model": planned_model, "worker_tier": worker.get("tier"), "worker_model": worker.get("model"),
                      "state": state})
    return cells


def differences(before: Plan | None, after: Plan) -> list[str]:
    """What a plan changed, field by field (`r 0.2 -> 0.3`); the GPUs it moved as one entry."""
    if before is None:
        return ["first plan"]
    changed = [f"{name} {getattr(before, name)} -> {getattr(after, name)}" for name in PLAN_FIELDS
               if getattr(before, name) != getattr(after, name)]
    moved = sum(before.assignment.get(gpu) != tier for gpu, tier in after.assignment.items())
    if moved and not any(change.startswith(("light_gpus", "heavy_gpus")) for change in changed):
        changed.append(f"{moved} GPU(s) reassigned")
    return changed or ["republished (no change)"]


class Switches:
    """Each plan change's expected cost and, for those seen here, what it realised (SwitchWatch). Its
    memory: one entry per plan version in the store's history (PLAN_HISTORY), the older forgotten."""

    def __init__(self, price: Callable[[Plan, Plan], float], bound: int = 50) -> None:
        self.price = price
        self.bound = bound
        self.watch = SwitchWatch()
        self.costs: dict[int, dict[str, float | None]] = {}  # version -> expected_s, realised_s, dark_gpu_s
        self.seen: Plan | None = None

    def follow(self, plan: Plan | None, now: float, workers: Sequence[Mapping[str, Any]]) -> None:
        """A new plan version starts a switch (its GPUs that change tier or model); the heartbeats
        say when it is done."""
        if plan is not None and (self.seen is None or plan.version > self.seen.version):
            if self.seen is not None:
                self.start(self.seen, plan)
            self.seen = plan
        done = self.watch.update(now, [dict(worker) for worker in workers])
        if done is not None:
            self.costs.setdefault(done.version, {}).update(realised_s=done.realised_s, dark_gpu_s=done.dark_gpu_s)

    def start(self, before: Plan, plan: Plan) -> None:
        waiting = changing_gpus(before.assignment, plan.assignment, (before.light_model, before.heavy_model),
                                (plan.light_model, plan.heavy_model))
        try:
            expected: float | None = self.price(before, plan)
        except (ValueError, KeyError, FileNotFoundError):  # a model or profile the price does not know
            expected = None
        self.costs[plan.version] = {"expected_s": expected, "realised_s": None if waiting else 0.0,
                                    "dark_gpu_s": None if waiting else 0.0}
        self.watch.start(Switch(plan.version, plan.created_at, expected or 0.0, waiting))
        for old in sorted(self.costs)[:-self.bound]:
            del self.costs[old]

    def pending(self) -> int | None:
        """The version of the switch still in progress, if any."""
        return self.watch.current.version if self.watch.current else None


def changes(history: list[Plan], switches: Switches, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` plans of the store's history (newest first), each with what it changed from
    the one before, why, and its costs."""
    rows = []
    for index, plan in enumerate(history[:limit]):
        before = history[index + 1] if index + 1 < len(history) else None
        cost = switches.costs.get(plan.version, {})
        rows.append({"version": plan.version, "at": plan.created_at, "reason": plan.reason,
                     "changes": differences(before, plan) if before is not None or plan.version == 1 else [],
                     "expected_s": cost.get("expected_s"), "realised_s": cost.get("realised_s"),
                     "dark_gpu_s": cost.get("dark_gpu_s"), "in_progress": switches.pending() == plan.version})
    return rows


def pairs(history: list[Plan], current: Plan | None) -> dict[int, tuple[str, str]]:
    """Plan version -> its (light, heavy) models, for the versions the history holds."""
    found = {plan.version: (plan.light_model, plan.heavy_model) for plan in history}
    if current is not None:
        found[current.version] = (current.light_model, current.heavy_model)
    return found
