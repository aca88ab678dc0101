"""What an experiment or a simulation produced: one outcome per job and the plans over time,
turned into `report.json` (the totals), `timeseries.csv` (per window) and the figures.

Quality accounting, as in the paper (docs/experiments.md): FID is a set-level metric, so it is
never averaged per image. In each window, the completed jobs are grouped by the plan pair they
were served under; a group's FID is looked up in the measured quality table at the pair and the
*realised* fractions (r = routed straight to heavy / jobs, d = escalated / jobs that took the
light path), interpolated between grid points; a single-model group gets that model's FID. The
run's mean FID is the mean over groups weighted by their completed jobs.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import Field

from shared.logging import get_logger
from shared.policies.pareto import QualityTable
from shared.profiles import Profile
from shared.schemas import Plan, Strict

TIMESERIES_COLUMNS = ("t_s", "demand_qps", "completed", "within_slo", "late", "dropped", "failed",
                      "violation_ratio", "heavy_share", "fid", "light_model", "heavy_model", "r", "d",
                      "light_gpus", "heavy_gpus")


@dataclass(frozen=True)
class JobOutcome:
    """One job of a trace, in trace time (seconds from the first arrival)."""

    arrival_s: float
    state: str  # done, expired, failed, cancelled (not counted) or lost (never reached a terminal state)
    end_s: float | None  # when it reached its terminal state
    slo_s: float
    light_model: str | None = None  # the pair of the plan it was routed under
    heavy_model: str | None = None
    tier: str | None = None  # the tier whose image it was served
    routed_heavy: bool = False
    escalated: bool = False
    priority: str = "interactive"  # the service class (docs/classes.md)

    @property
    def latency_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.arrival_s

    @property
    def within_slo(self) -> bool:
        return self.state == "done" and self.latency_s is not None and self.latency_s <= self.slo_s

    @property
    def cascade(self) -> bool:
        return self.light_model is not None and self.light_model != self.heavy_model

    @property
    def served_model(self) -> str | None:
        if self.state != "done":
            return None
        return self.heavy_model if self.tier == "heavy" else self.light_model


@dataclass(frozen=True)
class PlanEvent:
    """A change of the plan's interactive fields (plans.csv), with the policy's reason for it: the
    reason is what says which rule moved the fleet (a burst's readiness, a trim, a switch priced)."""

    t_s: float
    light_model: str
    heavy_model: str
    r: float
    d: float
    light_gpus: int
    heavy_gpus: int
    reason: str = field(default="", compare=False)  # commentary: two logs of one plan sequence compare equal

    @classmethod
    def of(cls, t_s: float, plan: Plan) -> PlanEvent:
        """The event of `plan` coming into force at `t_s` (the simulator's and the runner's log alike)."""
        return cls(t_s, plan.light_model, plan.heavy_model, plan.r, plan.d, plan.light_gpus, plan.heavy_gpus,
                   plan.reason)


def interactive_fields(plan: Plan) -> dict:
    """A plan less its version, time, reason, batch placement and burst guard: what a PlanEvent
    records a change of. The placement is the batch class's (its own log), and the guard, which
    follows the demand, is the routers' (a plan published for it alone changes no decision)."""
    return plan.model_dump(exclude={"version", "created_at", "reason", "batch_heavy", "batch_first", "burst_qps"})


class Report(Strict):
    policy: str
    mode: str = Field(description="experiment (the real services) or simulate")
    trace: str
    profile: str
    slo_s: float
    gpus: int
    submitted: int
    completed: int
    within_slo: int
    late: int
    dropped: int
    failed: int
    lost: int
    slo_violation_ratio: float
    mean_fid: float | None
    p50_latency_s: float | None
    p99_latency_s: float | None
    heavy_share: float | None = Field(description="Of the jobs completed under a cascade plan, the share served "
                                                  "by its heavy model; None when no cascade ran.")
    model_shares: dict[str, float]
    plan_changes: int
    window_s: float
    duration_s: float
    wall_s: float
    notes: dict[str, Any] = Field(default_factory=dict)
    classes: dict[str, Any] | None = Field(
        default=None, description="With a batch backlog (docs/classes.md): each class's jobs, violations and mean "
                                  "FID, the GPU-seconds each used and the batch class's use of those the interactive "
                                  "class left idle (shared/experiments/class_report.py). The totals above are the "
                                  "interactive class's (the trace's).")
    oracle_fid: float | None = Field(
        default=None, description="The oracle's bound on the mean FID of any policy with at most 1 % SLO violations "
                                  "on this trace and fleet (shared/experiments/oracle.py); None: no bound.")
    light_only_fid: float | None = Field(
        default=None, description="The FID of serving every job with the profile's lightest model.")
    oracle_gain_share: float | None = Field(
        default=None, description="(light_only_fid - mean_fid) / (light_only_fid - oracle_fid): the share of the "
                                  "gain over the lightest model that the oracle bounds, that this run got.")

    def with_oracle(self, oracle_fid: float | None, light_only_fid: float | None) -> Report:
        """This report with the oracle's bound and its share of the bound's gain."""
        return self.model_copy(update={"oracle_fid": oracle_fid, "light_only_fid": light_only_fid,
                                       "oracle_gain_share": gain_share(self.mean_fid, light_only_fid, oracle_fid)})


def gain_share(mean_fid: float | None, light_only_fid: float | None, oracle_fid: float | None) -> float | None:
    """How much of the oracle's gain over the lightest model a run got (1: all of it; 0: none,
    negative: worse than the lightest model); None when a number is missing or the oracle
    gains nothing."""
    if mean_fid is None or light_only_fid is None or oracle_fid is None or light_only_fid - oracle_fid <= 0:
        return None
    return (light_only_fid - mean_fid) / (light_only_fid - oracle_fid)


class FidLookup:
    """FID of a served mix from the measured quality table (bilinear in r and d)."""

    def __init__(self, quality: QualityTable, profile: Profile) -> None:
        self.profile = profile
        self.grids: dict[tuple[str, str], np.ndarray] = {}
        rows_by_pair: dict[tuple[str, str], list] = defaultdict(list)
        for row in quality.rows:
            rows_by_pair[(row.light_model, row.heavy_model)].append(row)
        for pair, rows in rows_by_pair.items():
            grid = np.full((11, 11), np.nan)
            for row in rows:
                grid[round(row.r * 10), round(row.d * 10)] = row.fid
            grid[10, :] = grid[10, 0]  # all routed to heavy: d changes nothing
            self.grids[pair] = grid

    def model_fid(self, name: str) -> float:
        fid = self.profile.model(name).fid
        if fid is None:
            raise ValueError(f"model {name} has no measured FID")
        return fid

    def fid(self, light: str, heavy: str, r: float, d: float) -> float:
        if light == heavy:
            return self.model_fid(light)
        grid = self.grids.get((light, heavy))
        if grid is None:
            raise ValueError(f"the quality table has no pair {light} -> {heavy}")
        if r >= 1.0:
            return self.model_fid(heavy)
        if d <= 0.0 and r <= 0.0:
            return self.model_fid(light)
        return bilinear(grid, r * 10, d * 10)


def bilinear(grid: np.ndarray, x: float, y: float) -> float:
    x, y = min(max(x, 0.0), 10.0), min(max(y, 0.0), 10.0)
    x0, y0 = min(int(x), 9), min(int(y), 9)
    fx, fy = x - x0, y - y0
    top = grid[x0, y0] * (1 - fy) + grid[x0, y0 + 1] * fy
    bottom = grid[x0 + 1, y0] * (1 - fy) + grid[x0 + 1, y0 + 1] * fy
    return float(top * (1 - fx) + bottom * fx)


def group_fids(done: list[JobOutcome], lookup: FidLookup) -> list[tuple[float, int]]:
    """(FID, jobs) per plan pair among completed jobs, from the realised fractions."""
    groups: dict[tuple[str, str], list[JobOutcome]] = defaultdict(list)
    for job in done:
        if job.light_model is not None:
            groups[(job.light_model, job.heavy_model or job.light_model)].append(job)
    result = []
    for (light, heavy), jobs in groups.items():
        routed = sum(job.routed_heavy for job in jobs)
        light_path = len(jobs) - routed
        escalated = sum(job.escalated for job in jobs)
        r = routed / len(jobs)
        d = escalated / light_path if light_path else 0.0
        result.append((lookup.fid(light, heavy, r, d), len(jobs)))
    return result


def weighted_mean(pairs: Iterable[tuple[float, int]]) -> float | None:
    pairs = list(pairs)
    total = sum(n for _, n in pairs)
    return None if total == 0 else sum(value * n for value, n in pairs) / total


@dataclass
class Window:
    t_s: float
    arrivals: int = 0
    ended: list[JobOutcome] = field(default_factory=list)


def windows_of(outcomes: list[JobOutcome], window_s: float, duration_s: float) -> list[Window]:
    count = max(1, math.ceil(duration_s / window_s))
    windows = [Window(i * window_s) for i in range(count)]

    def index(t: float) -> int:
        return min(max(int(t // window_s), 0), count - 1)

    for job in outcomes:
        windows[index(job.arrival_s)].arrivals += 1
        if job.state == "cancelled":  # its client withdrew it: neither served nor a violation
            continue
        # A lost job never ended; it is counted where its deadline fell.
        windows[index(job.end_s if job.end_s is not None else job.arrival_s + job.slo_s)].ended.append(job)
    return windows


def plan_at(plans: list[PlanEvent], t: float) -> PlanEvent | None:
    current = None
    for plan in plans:
        if plan.t_s > t:
            break
        current = plan
    return current


def timeseries(outcomes: list[JobOutcome], plans: list[PlanEvent], lookup: FidLookup, window_s: float,
               duration_s: float) -> list[dict[str, Any]]:
    rows = []
    for window in windows_of(outcomes, window_s, duration_s):
        done = [job for job in window.ended if job.state == "done"]
        within = sum(job.within_slo for job in done)
        cascade = [job for job in done if job.cascade]
        violations = len(window.ended) - within
        plan = plan_at(plans, window.t_s + window_s)
        rows.append({
            "t_s": window.t_s, "demand_qps": window.arrivals / window_s, "completed": len(done),
            "within_slo": within, "late": len(done) - within,
            "dropped": sum(job.state == "expired" for job in window.ended),
            "failed": sum(job.state in ("failed", "lost") for job in window.ended),
            "violation_ratio": violations / len(window.ended) if window.ended else None,
            "heavy_share": sum(job.tier == "heavy" for job in cascade) / len(cascade) if cascade else None,
            "fid": weighted_mean(group_fids(done, lookup)),
            "light_model": plan.light_model if plan else "", "heavy_model": plan.heavy_model if plan else "",
            "r": plan.r if plan else None, "d": plan.d if plan else None,
            "light_gpus": plan.light_gpus if plan else None, "heavy_gpus": plan.heavy_gpus if plan else None,
        })
    return rows


def build_report(outcomes: list[JobOutcome], plans: list[PlanEvent], lookup: FidLookup, *, policy: str, mode: str,
                 trace: str, profile: str, slo_s: float, gpus: int, window_s: float, duration_s: float,
                 wall_s: float, notes: dict[str, Any] | None = None) -> tuple[Report, list[dict[str, Any]]]:
    series = timeseries(outcomes, plans, lookup, window_s, duration_s)
    outcomes = [job for job in outcomes if job.state != "cancelled"]  # neither served nor a violation
    done = [job for job in outcomes if job.state == "done"]
    within = sum(job.within_slo for job in done)
    counts = {state: sum(job.state == state for job in outcomes) for state in ("expired", "failed", "lost")}
    latencies = np.array([job.latency_s for job in done])
    cascade = [job for job in done if job.cascade]
    fid_groups = [(row["fid"], row["completed"]) for row in series if row["fid"] is not None]
    models: defaultdict[str, int] = defaultdict(int)
    for job in done:
        served = job.served_model
        if served is not None:  # None: the plan it ran under is not in the plan log
            models[served] += 1
    violations = len(outcomes) - within
    report = Report(
        policy=policy, mode=mode, trace=trace, profile=profile, slo_s=slo_s, gpus=gpus, submitted=len(outcomes),
        completed=len(done), within_slo=within, late=len(done) - within, dropped=counts["expired"],
        failed=counts["failed"], lost=counts["lost"],
        slo_violation_ratio=violations / len(outcomes) if outcomes else 0.0,
        mean_fid=weighted_mean(fid_groups),
        p50_latency_s=float(np.percentile(latencies, 50)) if len(done) else None,
        p99_latency_s=float(np.percentile(latencies, 99)) if len(done) else None,
        heavy_share=sum(job.tier == "heavy" for job in cascade) / len(cascade) if cascade else None,
        model_shares={name: n / len(done) for name, n in sorted(models.items())},
        plan_changes=max(len(plans) - 1, 0), window_s=window_s, duration_s=duration_s, wall_s=wall_s,
        notes=notes or {})
    return report, series


def write_run(out_dir: Path, report: Report, series: list[dict[str, Any]], plans: list[PlanEvent]) -> list[Path]:
    """report.json, timeseries.csv, plans.csv and the timeline figure (the figure only with the
    `experiments` extra: matplotlib is not needed to run, or to read, a simulation)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_bytes(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    with open(out_dir / "timeseries.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TIMESERIES_COLUMNS)
        writer.writeheader()
        for row in series:
            writer.writerow({key: "" if value is None else round_value(value) for key, value in row.items()})
    with open(out_dir / "plans.csv", "w", newline="") as handle:
        plan_writer = csv.writer(handle)
        plan_writer.writerow(("t_s", "light_model", "heavy_model", "r", "d", "light_gpus", "heavy_gpus", "reason"))
        for plan in plans:
            plan_writer.writerow((round(plan.t_s, 3), plan.light_model, plan.heavy_model, plan.r, plan.d,
                                  plan.light_gpus, plan.heavy_gpus, plan.reason))
    written = [out_dir / "report.json", out_dir / "timeseries.csv", out_dir / "plans.csv"]
    try:
        from shared.experiments.plots import plot_run
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        get_logger(__name__).warning("no figure: matplotlib is not installed", folder=str(out_dir),
                                     install="pip install 'hadis[experiments]'")
        return written
    return [*written, plot_run(out_dir)]


def round_value(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value
