"""`hadis simulate --policy oracle`: a lower bound on the mean FID that ANY policy could report
on this trace and fleet with at most 1 % SLO violations. A policy's gain is read against it
(the report's `oracle_gain_share`); docs/experiments.md, "The oracle", has the argument at length.

The bound is a linear program over a relaxation of everything the report can credit:

1. **Per-job points.** A job served by model m costs at least e_m GPU-seconds, e_m the lowest
   batch time / batch size over the sizes a plan may run (1 to 64, <= max_batch) whose batch
   (the profiled time times the emulated time scale: the simulator's `profiled_batch_s`)
   fits in the SLO: a job served within the SLO ran in such a batch (and an escalated one in
   one per tier). A quality-table row (pair, r, d) then costs
   c = (1 - r) e_light + h e_heavy, h = r + (1 - r) d, and a single model e_m; every row of the
   table (not only the Pareto ones) and every model with an FID is a point (c, FID). A model no
   batch of which fits the SLO is dropped, with the rows that send it traffic.
2. **The hull.** The report's FID of a group (a window's completed jobs of one plan pair) is
   the table's FID interpolated bilinearly at the realised (r, d). Cost is bilinear in (r, d)
   too, so the group's (cost per job, FID) is the same convex combination of its cell's
   corners: it lies on or above the lower convex hull of the points. So does a job-weighted mix
   of groups. Only the hull's decreasing part matters (beyond the lowest FID, more cost buys
   nothing), and a group of n jobs with cost C is credited at best n * H(C / n), i.e. as n jobs
   spread over the hull's vertices with total cost <= C.
3. **Time, as the report groups it.** Arrivals fall in buckets of dt = SLO / 12. A job served
   within the SLO did its work between its arrival and its deadline: in buckets i .. i + K of
   its arrival bucket i (K = ceil(SLO / dt) + 1, one more than needed), and at most G * dt
   GPU-seconds are done in a bucket. It ended in one of the report's windows that its
   [arrival, arrival + SLO] meets. The FID is credited per window: jobs of one arrival bucket
   ending in one window carry some cost (at most the dearest job's, c_max, per job), and the
   window's jobs are spread over the hull's vertices with their total cost. Mixing happens per
   window, not per bucket, because the report mixes that way: a window's group averages the
   costs of jobs that arrived in different buckets.
4. **Violations.** Of N jobs at least N - k, k = floor(0.01 N), end within the SLO; the others
   are dropped or late. A dropped job is not in the report's mean; here it counts at the
   lowest FID of any point (fid_min): the bound is a mean over N jobs, never above a mean over
   fewer (every credited FID is >= fid_min). A late job is in the mix of the window it ended
   in, and so is its price (at most c_max): its work only has to fit in the GPU-seconds that
   the jobs within the SLO leave unused before that window's end (times late_discount: a late
   batch may be larger, and cheaper per image, than the SLO allows); in the last window, which
   also counts every job that ended after the trace, it is free. Counting a late job at
   fid_min for free instead is not a bound: one late escalation added to n jobs that
   sdxl-lightning served alone under the sdxl-lightning -> sd35-large-turbo pair takes the
   group's total FID from n * 29.75 to (n + 1) * 29.75 - 11.2 (the cell's slope in d), i.e. it
   adds 18.55, below fid_min (19.29 on the paper profiles).

Everything else only loosens: batching at the best efficiency, no model switch or load time,
no queueing, no latency constraint on a path beyond each batch fitting the SLO, late jobs'
work before their arrival, dropped jobs' GPU time, several pairs mixed in a window, fractional
jobs. The program: minimise sum z[w, v] (fid_v - fid_min) over the jobs z at hull vertex v
ending in window w; the bound is (that + N fid_min) / N. Infeasible (even the cheapest point
cannot serve N - k jobs in time): no bound, mean_fid None, and the most jobs it can serve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from shared.experiments.report import TIMESERIES_COLUMNS, Report
from shared.experiments.trace import Trace
from shared.policies.pareto import heavy_share, load_quality, load_table
from shared.profiles import ModelProfile, load_profile

VIOLATION_SHARE = 0.01  # the share of jobs a run may miss its SLO for and still count
BUCKETS_PER_SLO = 12
LARGEST_BATCH = 64  # a plan's batch sizes go up to 64 (shared/schemas.py: Plan)
RELAXATION = ("per-job (GPU-seconds, FID) points at each model's best batch within the SLO; their lower convex "
              "hull (bilinear FID, bilinear cost); fluid jobs in SLO/12 buckets, work within arrival + SLO + one "
              "bucket, G GPU-seconds per second; costs and FIDs mixed per report window; k = floor(1 % N) jobs "
              "dropped (at the best FID) or late (in a window's mix, their work in spare GPU-seconds before the "
              "window's end); no switches, loads, queueing or path latency (shared/experiments/oracle.py)")


@dataclass(frozen=True)
class JobPoint:
    """What one job served at a table row (or by one model) costs and is credited."""

    cost_s: float  # GPU-seconds per job
    fid: float
    label: str
    heavy_share: float | None  # the share its heavy model serves; None for a single model

    @property
    def cascade(self) -> bool:
        return self.heavy_share is not None


@dataclass(frozen=True)
class Oracle:
    """The program's answer for one trace and fleet (per-window lists: the report's windows)."""

    submitted: int
    within: float  # jobs served within the SLO
    late: float  # jobs of the violation budget credited in a window's mix
    fid: float | None  # the bound on the mean FID; None when even the cheapest point cannot serve 99 %
    heavy_share: float | None  # of the jobs at cascade vertices, the heavy model's share
    hull: list[JobPoint]
    dt_s: float
    buckets: int
    window_s: float
    window_demand_qps: list[float]
    window_jobs: list[float]  # credited jobs (within and late) by the window they end in
    window_within: list[float]
    window_missed: list[float | None]  # of the jobs arriving in the window, the share not served in time
    window_fid: list[float | None]
    window_heavy: list[float | None]
    solve_s: float
    status: str

    @property
    def budget(self) -> int:
        return violation_budget(self.submitted)


def image_cost_s(model: ModelProfile, slo_s: float, scale: float) -> float | None:
    """GPU-seconds per image at the model's most efficient batch that fits in the SLO; None when
    no batch does (or the profile has no latencies)."""
    if not model.latency_ms:
        return None
    costs = [model.batch_latency_s(size) * scale / size for size in range(1, LARGEST_BATCH + 1)
             if (model.max_batch is None or size <= model.max_batch) and model.batch_latency_s(size) * scale <= slo_s]
    return min(costs) if costs else None


def late_discount(profile_name: str, slo_s: float, scale: float) -> float:
    """The least share of its price (at the SLO's batches) that a late job's image costs in GPU
    time: a late batch may be larger than the SLO allows, and cheaper per image (1 when the most
    efficient batch fits in the SLO, as on the paper profiles)."""
    profile = load_profile(profile_name)
    within = model_costs(profile_name, slo_s, scale)
    ratios = [cost / within[name] for name in within
              if (cost := image_cost_s(profile.model(name), math.inf, scale)) is not None and within[name] > 0]
    return min(ratios, default=1.0)


def model_costs(profile_name: str, slo_s: float, scale: float) -> dict[str, float]:
    """GPU-seconds per image of each model that can serve within the SLO."""
    profile = load_profile(profile_name)
    costs = {name: image_cost_s(model, slo_s, scale) for name, model in profile.models.items()}
    return {name: cost for name, cost in costs.items() if cost is not None}


def job_points(profile_name: str, slo_s: float, scale: float) -> list[JobPoint]:
    """Every single model with an FID and every quality-table row, at their cost per job; rows
    that send traffic to a model no batch of which fits the SLO are left out."""
    profile = load_profile(profile_name)
    costs = model_costs(profile_name, slo_s, scale)
    points = [JobPoint(cost, fid, name, None) for name, cost in costs.items()
              if (fid := profile.model(name).fid) is not None]
    for row in load_quality(load_table(profile_name).quality_table).rows:
        h = heavy_share(row.r, row.d)
        shares = [(name, share) for name, share in ((row.light_model, 1.0 - row.r), (row.heavy_model, h)) if share > 0]
        if all(name in costs for name, _ in shares):
            points.append(JobPoint(sum(costs[name] * share for name, share in shares), row.fid,
                                   f"{row.light_model} -> {row.heavy_model} r={row.r:g} d={row.d:g}", h))
    return points


def dearest_job_s(profile_name: str, slo_s: float, scale: float) -> float:
    """The most GPU-seconds one job's images can cost at these prices: the dearest single model,
    or an escalation through the dearest pair of the table (light, then heavy)."""
    costs = model_costs(profile_name, slo_s, scale)
    pairs = {(row.light_model, row.heavy_model) for row in load_quality(load_table(profile_name).quality_table).rows}
    return max([*costs.values(), *(costs[a] + costs[b] for a, b in pairs if a in costs and b in costs)], default=0.0)


def lower_hull(points: list[JobPoint]) -> list[JobPoint]:
    """The decreasing part of the lower convex hull of (cost, FID): from the cheapest point to the
    lowest FID (Andrew's monotone chain; at equal cost only the lowest FID counts)."""
    cheapest: dict[float, JobPoint] = {}
    for point in sorted(points, key=lambda p: (round(p.cost_s, 12), p.fid)):  # float noise is not a cost
        cheapest.setdefault(round(point.cost_s, 12), point)
    hull: list[JobPoint] = []
    for point in cheapest.values():
        while len(hull) >= 2 and cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    best = min(range(len(hull)), key=lambda i: (hull[i].fid, hull[i].cost_s))
    return hull[:best + 1]


def cross(o: JobPoint, a: JobPoint, b: JobPoint) -> float:
    return (a.cost_s - o.cost_s) * (b.fid - o.fid) - (a.fid - o.fid) * (b.cost_s - o.cost_s)


def hull_fid(hull: list[JobPoint], cost_s: float) -> float:
    """The hull's FID at a cost per job (the lowest FID beyond its last vertex)."""
    return float(np.interp(cost_s, [p.cost_s for p in hull], [p.fid for p in hull]))


class Constraints:
    """Rows of one kind (<= or ==) of a sparse program, added in blocks of triplets."""

    def __init__(self) -> None:
        self.count = 0
        self.bounds: list[np.ndarray] = []
        self.terms_: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, bounds: np.ndarray | list[float]) -> np.ndarray:
        """New rows with these right-hand sides; their indices."""
        bounds = np.asarray(bounds, dtype=float)
        rows = np.arange(self.count, self.count + len(bounds))
        self.count += len(bounds)
        self.bounds.append(bounds)
        return rows

    def terms(self, rows: np.ndarray, columns: np.ndarray, values: float | np.ndarray) -> None:
        rows, columns = np.broadcast_arrays(rows, columns)
        self.terms_.append((rows.ravel(), columns.ravel(), np.broadcast_to(values, rows.shape).ravel()))

    def matrix(self, size: int) -> tuple[Any, Any]:
        """The rows as a sparse matrix and their bounds (None, None without rows): typed Any, as
        scipy's stubs for linprog do not list sparse matrices, which HiGHS takes as they are."""
        if not self.count:
            return None, None
        rows, columns, values = (np.concatenate(parts) for parts in zip(*self.terms_, strict=True))
        matrix = sparse.coo_array((values.astype(float), (rows, columns)), shape=(self.count, size)).tocsr()
        return matrix, np.concatenate(self.bounds)


class Program:
    """A linear program over non-negative variables, assembled in blocks."""

    def __init__(self) -> None:
        self.size = 0
        self.objective: list[np.ndarray] = []
        self.at_most = Constraints()
        self.equal = Constraints()

    def variables(self, count: int, cost: float | np.ndarray = 0.0) -> np.ndarray:
        index = np.arange(self.size, self.size + count)
        self.size += count
        self.objective.append(np.broadcast_to(np.asarray(cost, dtype=float), (count,)))
        return index

    def solve(self):
        a_ub, b_ub = self.at_most.matrix(self.size)
        a_eq, b_eq = self.equal.matrix(self.size)
        return linprog(np.concatenate(self.objective), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                       bounds=(0, None), method="highs")


@dataclass(frozen=True)
class Fleet:
    """What the oracle is asked about: the arrivals, and the fleet that serves them."""

    arrival_s: np.ndarray
    duration_s: float
    slo_s: float
    gpus: int
    window_s: float
    dearest_s: float  # GPU-seconds of the dearest job (per-job cap on credited work)
    late_discount: float = 1.0  # a late job's GPU time over its price (late_discount())

    @property
    def dt_s(self) -> float:
        return self.slo_s / BUCKETS_PER_SLO

    @property
    def reach(self) -> int:
        """Buckets after its arrival's in which a job's work may be done (one more than needed)."""
        return math.ceil(self.slo_s / self.dt_s - 1e-9) + 1

    @property
    def windows(self) -> int:
        return max(1, math.ceil(self.duration_s / self.window_s))  # as report.windows_of

    def window_of(self, t: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(t / self.window_s), 0, self.windows - 1).astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """Where the program's variables are: jobs per (arrival bucket, end window), late jobs per
    window, and jobs per (window, hull vertex)."""

    x: np.ndarray
    x_window: np.ndarray  # the window they end in
    x_arrival: np.ndarray  # the window their bucket begins in
    late: np.ndarray
    z: np.ndarray  # [window, vertex]


def build_program(fleet: Fleet, hull: list[JobPoint], least_within: float | None) -> tuple[Program, Layout]:
    """The fluid program (module docstring): minimise the FID credited above fid_min with at least
    `least_within` jobs within the SLO; with None, maximise the jobs within the SLO instead."""
    dt, windows, vertices = fleet.dt_s, fleet.windows, len(hull)
    counts = np.bincount(np.floor(fleet.arrival_s / dt).astype(np.int64))
    active = np.flatnonzero(counts)
    # The windows a job of each bucket can end in within the SLO (a little wider at the edges).
    first = fleet.window_of(active * dt - 1e-9)
    span = fleet.window_of((active + 1) * dt + fleet.slo_s + 1e-9) - first + 1
    bucket_of = np.repeat(np.arange(len(active)), span)
    window_of = first[bucket_of] + np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    fid = np.array([p.fid for p in hull])
    program = Program()
    x = program.variables(len(bucket_of), 0.0 if least_within is not None else -1.0)
    q = program.variables(len(bucket_of))  # GPU-seconds those jobs are credited
    y = program.variables(len(active) * (fleet.reach + 1))  # [bucket, reach]: their work, by when it is done
    z = program.variables(windows * vertices, np.tile(fid - fid.min(), windows) if least_within is not None else 0.0)
    late, free = program.variables(windows), program.variables(windows)
    spare = program.variables(int(active[-1]) + fleet.reach + 1)  # GPU-seconds no job within the SLO uses
    add_time(program, fleet, active, counts[active], bucket_of, x, q, y, spare)
    add_windows(program, fleet, hull, window_of, x, q, z, late, free)
    add_late(program, fleet, free, spare)
    if least_within is not None:
        program.at_most.terms(program.at_most.add([-least_within]), x, -1.0)
    program.at_most.terms(program.at_most.add([len(fleet.arrival_s)]), np.concatenate([x, late]), 1.0)
    arrival = fleet.window_of(active * dt)[bucket_of]
    return program, Layout(x, window_of, arrival, late, z.reshape(windows, vertices))


def add_time(program: Program, fleet: Fleet, active: np.ndarray, arrivals: np.ndarray, bucket_of: np.ndarray,
             x: np.ndarray, q: np.ndarray, y: np.ndarray, spare: np.ndarray) -> None:
    """No more jobs of a bucket than arrived in it; their credited work done between their
    arrival and the SLO after it; G * dt GPU-seconds a bucket, for that work and the spare; at
    most the dearest job's work credited per job."""
    at_most, equal, reach = program.at_most, program.equal, fleet.reach + 1
    rows = at_most.add(arrivals)
    at_most.terms(rows[bucket_of], x, 1.0)
    rows = equal.add(np.zeros(len(active)))
    equal.terms(rows[bucket_of], q, 1.0)
    y_bucket = np.arange(len(y)) // reach
    equal.terms(rows[y_bucket], y, -1.0)
    done_in = active[y_bucket] + np.arange(len(y)) % reach
    rows = at_most.add(np.full(len(spare), fleet.gpus * fleet.dt_s))
    at_most.terms(rows[done_in], y, 1.0)
    at_most.terms(rows, spare, 1.0)
    rows = at_most.add(np.zeros(len(x)))
    at_most.terms(rows, q, 1.0)
    at_most.terms(rows, x, -fleet.dearest_s)


def add_windows(program: Program, fleet: Fleet, hull: list[JobPoint], window_of: np.ndarray, x: np.ndarray,
                q: np.ndarray, z: np.ndarray, late: np.ndarray, free: np.ndarray) -> None:
    """Each window's jobs (within the SLO, and late ones) spread over the hull's vertices at no
    more than their credited work, a late job's up to the dearest job's, free."""
    at_most, equal, windows = program.at_most, program.equal, fleet.windows
    vertices = len(hull)
    cost = np.tile([p.cost_s for p in hull], windows)
    z_window = np.repeat(np.arange(windows), vertices)
    rows = equal.add(np.zeros(windows))
    equal.terms(rows[z_window], z, 1.0)
    equal.terms(rows[window_of], x, -1.0)
    equal.terms(rows, late, -1.0)
    rows = at_most.add(np.zeros(windows))
    at_most.terms(rows[z_window], z, cost)
    at_most.terms(rows[window_of], q, -1.0)
    at_most.terms(rows, free, -1.0)
    rows = at_most.add(np.zeros(windows))
    at_most.terms(rows, free, 1.0)
    at_most.terms(rows, late, -fleet.dearest_s)


def add_late(program: Program, fleet: Fleet, free: np.ndarray, spare: np.ndarray) -> None:
    """A late job credited in a window ended in it, so its GPU time was spent before the window's
    end, on GPU-seconds no job within the SLO used: by each window's end, the late work of it
    and the windows before it (times late_discount) fits in the spare GPU-seconds so far. The
    last window also counts every job that ended after the trace: its late work is free."""
    windows = fleet.windows - 1
    if windows < 1:
        return
    rows = program.at_most.add(np.zeros(windows))
    upto, earlier = np.tril_indices(windows)
    program.at_most.terms(rows[upto], free[earlier], fleet.late_discount)
    ends = np.minimum(np.floor((np.arange(windows) + 1) * fleet.window_s / fleet.dt_s + 1e-9).astype(np.int64) + 1,
                      len(spare))
    program.at_most.terms(np.repeat(rows, ends), np.concatenate([spare[:end] for end in ends]), -1.0)


def violation_budget(jobs: int) -> int:
    """k: the jobs a run may miss the SLO for with at most 1 % violations."""
    return math.floor(jobs * VIOLATION_SHARE + 1e-9)


def solve(fleet: Fleet, hull: list[JobPoint]) -> Oracle:
    """The bound for these arrivals on this fleet; when even the cheapest point cannot serve
    N - k jobs in time, no bound (fid None) and the most jobs that can be served in time."""
    started = time.perf_counter()
    total = len(fleet.arrival_s)
    status = "no jobs" if not total else "no model can serve within the SLO"
    values, layout = None, None
    if total and hull:
        program, layout = build_program(fleet, hull, total - violation_budget(total))
        result = program.solve()
        status = "optimal"
        if result.status == 2:
            program, layout = build_program(fleet, hull, None)
            result = program.solve()
            status = "infeasible: fewer than 99 % of the jobs can be served within the SLO at any point"
        if result.status != 0:
            raise RuntimeError(f"the oracle's program did not solve: {result.message}")
        values = result.x
    return answer(fleet, hull, values, layout, status, time.perf_counter() - started)


def answer(fleet: Fleet, hull: list[JobPoint], values: np.ndarray | None, layout: Layout | None, status: str,
           solve_s: float) -> Oracle:
    """The program's solution as totals and per-window series (no FIDs without a bound)."""
    total, windows = len(fleet.arrival_s), fleet.windows
    arrivals = np.bincount(fleet.window_of(fleet.arrival_s), minlength=windows).astype(float)
    demand = arrivals / fleet.window_s
    within, late = 0.0, 0.0
    jobs: np.ndarray = np.zeros(windows)
    served: np.ndarray = np.zeros(windows)
    by_window: np.ndarray = np.zeros(windows)
    bound: float | None = None
    heavy_share_: float | None = None
    window_fid: list[float | None] = [None] * windows
    window_heavy: list[float | None] = [None] * windows
    if values is not None and layout is not None:
        x, z = values[layout.x], values[layout.z]
        within, jobs = float(x.sum()), z.sum(axis=1)
        by_window = np.bincount(layout.x_window, weights=x, minlength=windows)
        served = np.bincount(layout.x_arrival, weights=x, minlength=windows)
    if status == "optimal" and values is not None and layout is not None:
        z = values[layout.z]
        fid = np.array([p.fid for p in hull])
        cascade = np.array([p.cascade for p in hull])
        heavy = np.array([p.heavy_share or 0.0 for p in hull])
        late = float(values[layout.late].sum())
        bound = float((z * (fid - fid.min())).sum() + total * fid.min()) / total
        heavy_share_ = share(float((z[:, cascade] @ heavy[cascade]).sum()), float(z[:, cascade].sum()))
        window_fid = [share(float(z[w] @ fid), float(jobs[w])) for w in range(windows)]
        window_heavy = [share(float(z[w, cascade] @ heavy[cascade]), float(z[w, cascade].sum()))
                        for w in range(windows)]
    return Oracle(submitted=total, within=within, late=late, fid=bound, heavy_share=heavy_share_, hull=hull,
                  dt_s=fleet.dt_s, buckets=math.floor(fleet.duration_s / fleet.dt_s) + 1, window_s=fleet.window_s,
                  window_demand_qps=demand.tolist(), window_jobs=jobs.tolist(), window_within=by_window.tolist(),
                  window_missed=[share(max(arrived - served[w], 0.0), arrived) for w, arrived in enumerate(arrivals)],
                  window_fid=window_fid, window_heavy=window_heavy, solve_s=solve_s, status=status)


def share(part: float, whole: float) -> float | None:
    return float(part / whole) if whole > 1e-9 else None


_SOLVED: dict[tuple, Oracle] = {}


def oracle_for(trace: Trace, profile: str, slo_s: float, gpus: int, scale: float = 1.0,
               window_s: float | None = None) -> Oracle:
    """The bound for a trace on a fleet, solved once per process: every report of a run gets its
    share of it, and best-static's sweep and --band build many reports of one trace."""
    window = window_s or slo_s
    key = (trace.name, len(trace), trace.duration_s, profile, slo_s, gpus, scale, window)
    if key not in _SOLVED:
        hull = lower_hull(job_points(profile, slo_s, scale))
        fleet = Fleet(trace.arrival_s, trace.duration_s, slo_s, gpus, window, dearest_job_s(profile, slo_s, scale),
                      late_discount(profile, slo_s, scale))
        _SOLVED[key] = solve(fleet, hull)
    return _SOLVED[key]


def oracle_report(oracle: Oracle, *, trace: str, profile: str, slo_s: float, gpus: int, duration_s: float,
                  wall_s: float) -> tuple[Report, list[dict[str, Any]]]:
    """The bound as a run's report and time series (policy "oracle"): the jobs it serves within
    the SLO, the violation budget it leaves (dropped) or credits late, and per window the
    demand, the FID it credits (by the window jobs end in) and the share of the jobs arriving in it
    that it does not serve within the SLO."""
    total = oracle.submitted
    within, late = round(oracle.within), round(oracle.late)
    notes = {"relaxation": RELAXATION, "status": oracle.status, "buckets": oracle.buckets, "dt_s": oracle.dt_s,
             "violation_budget": oracle.budget, "late_jobs": oracle.late,
             "hull": [[round(p.cost_s, 6), p.fid, p.label] for p in oracle.hull], "solve_s": oracle.solve_s}
    report = Report(policy="oracle", mode="simulate", trace=trace, profile=profile, slo_s=slo_s, gpus=gpus,
                    submitted=total, completed=within + late, within_slo=within, late=late,
                    dropped=total - within - late, failed=0, lost=0,
                    slo_violation_ratio=(total - oracle.within) / total if total else 0.0, mean_fid=oracle.fid,
                    p50_latency_s=None, p99_latency_s=None, heavy_share=oracle.heavy_share, model_shares={},
                    plan_changes=0, window_s=oracle.window_s, duration_s=duration_s, wall_s=wall_s, notes=notes)
    series = []
    for w, demand in enumerate(oracle.window_demand_qps):
        row: dict[str, Any] = dict.fromkeys(TIMESERIES_COLUMNS)
        row.update(t_s=w * oracle.window_s, demand_qps=demand, completed=oracle.window_jobs[w],
                   within_slo=oracle.window_within[w], late=oracle.window_jobs[w] - oracle.window_within[w],
                   failed=0, violation_ratio=oracle.window_missed[w], heavy_share=oracle.window_heavy[w],
                   fid=oracle.window_fid[w], light_model="", heavy_model="")
        series.append(row)
    return report, series
