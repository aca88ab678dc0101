"""`hadis simulate --policy best-static`: the best fixed plan in hindsight.

An adaptive controller must beat the plan it would never change if it knew the trace in
advance. This sweeps the planned-static policy (shared/policies/baselines.py: the planner's plan
for one demand, never changed) over demands from a low rate to the fleet's highest capacity,
simulates each distinct plan once, and keeps the best mean FID among the plans with at most 1 %
SLO violations (if none has, the one with the fewest violations, and the notes say so). The
choice uses the trace it is scored on: it is a bound on what a fixed plan could do, not a policy
one could deploy.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.experiments.oracle import VIOLATION_SHARE
from shared.experiments.report import FidLookup, JobOutcome, PlanEvent, build_report
from shared.experiments.simulator import simulate
from shared.experiments.trace import Trace
from shared.policies.baselines import PlannedStaticPolicy
from shared.policies.control import DECISION_FIELDS
from shared.settings import Settings

LOWEST_QPS = 0.5
POINTS = 60
SWEEP_COLUMNS = ("demand_qps", "light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus",
                 "heavy_gpus", "slo_violation_ratio", "mean_fid", "chosen")


@dataclass(frozen=True)
class SweepRow:
    """One distinct plan of the sweep: the lowest demand it was planned for, and its run."""

    demand_qps: float
    plan: dict[str, Any]  # DECISION_FIELDS
    slo_violation_ratio: float
    mean_fid: float | None

    def to_json(self) -> dict[str, Any]:
        return {"demand_qps": self.demand_qps, **self.plan, "slo_violation_ratio": self.slo_violation_ratio,
                "mean_fid": self.mean_fid}


@dataclass(frozen=True)
class BestStatic:
    """The chosen run and the sweep."""

    demand_qps: float
    plan: dict[str, Any]
    outcomes: list[JobOutcome]
    plans: list[PlanEvent]
    wall_s: float
    rows: list[SweepRow]
    note: str | None  # set when no plan kept violations within 1 %

    def notes(self) -> dict[str, Any]:
        notes: dict[str, Any] = {"static_demand_qps": self.demand_qps, "plan": self.plan,
                                 "sweep": [row.to_json() for row in self.rows]}
        if self.note:
            notes["best_static"] = self.note
        return notes


def static_settings(settings: Settings, demand_qps: float) -> Settings:
    return Settings(**{**settings.model_dump(), "controller_policy": "planned-static",
                       "static_demand_qps": demand_qps})


def distinct_plans(settings: Settings, gpus: int, points: int = POINTS) -> list[tuple[float, dict[str, Any]]]:
    """(demand, plan) for each distinct plan the planned-static policy makes over a geometric grid
    of demands, from LOWEST_QPS to the fleet's highest capacity (the planner's when overloaded);
    each plan with the lowest demand that gives it."""
    planner = PlannedStaticPolicy(static_settings(settings, LOWEST_QPS)).planner
    highest = planner.plan(1e9, gpus, settings.slo_s).capacity_qps
    seen: dict[tuple, tuple[float, dict[str, Any]]] = {}
    for demand in np.geomspace(LOWEST_QPS, max(highest, LOWEST_QPS), points):
        fields = planner.plan(float(demand), gpus, settings.slo_s).plan_fields()
        plan = {name: fields[name] for name in DECISION_FIELDS}
        seen.setdefault(tuple(plan.values()), (round(float(demand), 6), plan))
    return list(seen.values())


def sweep(settings: Settings, trace: Trace, lookup: FidLookup, *, window_s: float,
          progress: Callable[[str], None] | None = None, **options) -> BestStatic:
    """Simulate every distinct plan (`options` go to the simulator) and keep the best."""
    candidates = distinct_plans(settings, settings.emulated_gpus)
    rows, runs = [], []
    for index, (demand, plan) in enumerate(candidates, start=1):
        outcomes, plans, wall_s = simulate(static_settings(settings, demand), trace, **options)
        report, _ = build_report(outcomes, plans, lookup, policy="planned-static", mode="simulate",
                                 trace=trace.name, profile=settings.profile, slo_s=settings.slo_s,
                                 gpus=settings.emulated_gpus, window_s=window_s, duration_s=trace.duration_s,
                                 wall_s=wall_s)
        rows.append(SweepRow(demand, plan, report.slo_violation_ratio, report.mean_fid))
        runs.append((outcomes, plans, wall_s))
        if progress:
            progress(f"best-static: plan {index}/{len(candidates)} for {demand:.3g} qps: {describe(plan)}: "
                     f"violations {report.slo_violation_ratio * 100:.2f} %, FID {fmt(report.mean_fid)}")
    chosen, note = choose(rows)
    outcomes, plans, wall_s = runs[chosen]
    return BestStatic(rows[chosen].demand_qps, rows[chosen].plan, outcomes, plans, wall_s, rows, note)


def choose(rows: list[SweepRow]) -> tuple[int, str | None]:
    """The best mean FID among the runs with at most 1 % violations (then fewer violations, then
    the lower demand); with none, the fewest violations, and a note."""
    within = [i for i, row in enumerate(rows) if row.slo_violation_ratio <= VIOLATION_SHARE + 1e-12
              and row.mean_fid is not None]
    if within:
        return min(within, key=lambda i: (rows[i].mean_fid, rows[i].slo_violation_ratio, rows[i].demand_qps)), None
    best = min(range(len(rows)), key=lambda i: (rows[i].slo_violation_ratio, rows[i].mean_fid or float("inf")))
    return best, (f"no fixed plan kept SLO violations within {VIOLATION_SHARE:.0%}: this one has the fewest "
                  f"({rows[best].slo_violation_ratio:.2%})")


def describe(plan: dict[str, Any]) -> str:
    return (f"{plan['light_model']} -> {plan['heavy_model']} r={plan['r']:g} d={plan['d']:g} "
            f"batches {plan['light_batch']}/{plan['heavy_batch']} GPUs {plan['light_gpus']}/{plan['heavy_gpus']}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_sweep(out_dir: Path, result: BestStatic) -> Path:
    """sweep.csv beside the report: one row per distinct plan, the chosen one marked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sweep.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**row.to_json(), "mean_fid": "" if row.mean_fid is None else row.mean_fid,
                             "chosen": row.demand_qps == result.demand_qps})
    return path


def stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
