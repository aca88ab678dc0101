"""Online: the plan with the best quality that the demand, the GPUs and the SLO allow.

Exact: for every row of the Pareto table and every pair of batch sizes, the fewest GPUs that
cover each tier's demand is a ceiling division, so the planner scores every (row, light batch,
heavy batch) at once with numpy and takes the lexicographic minimum of (FID, cost, GPUs). No GPU
counts are searched; nothing is pruned that could be optimal. See docs/planner.md.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np

from shared.policies.pareto import ParetoRow, ParetoTable, chained, load_table
from shared.profiles import ModelProfile, Profile
from shared.schemas import Plan, Strict

__all__ = ["PlanDecision", "Planner", "allow_rows", "load_table", "jobs_to_shed", "tier_throughputs"]

LightShare = Literal["routed", "all"]
# Plan fields that the planner does not decide (the store and the controller fill them in).
NOT_PLANNED = frozenset({"version", "created_at", "assignment"})
# Slack on the integer GPU counts: need = 3.0000000001 GPUs is 3 GPUs, not 4.
GPU_SLACK = 1e-9
TIME_SLACK = 1e-9


class PlanDecision(Strict):
    light_model: str
    heavy_model: str
    r: float
    d: float
    heavy_share: float
    light_batch: int
    heavy_batch: int
    light_gpus: int
    heavy_gpus: int
    fid: float
    expected_latency_s: float
    capacity_qps: float
    feasible: bool
    solve_ms: float

    def reason(self) -> str:
        pair = f"{self.light_model} -> {self.heavy_model} r={self.r:g} d={self.d:g}"
        if self.feasible:
            return f"hadis planner: {pair}, FID {self.fid:g}, capacity {self.capacity_qps:.3g} qps"
        return (f"hadis planner: overloaded, highest-capacity configuration {pair}, FID {self.fid:g}, "
                f"capacity {self.capacity_qps:.3g} qps; shed by deadline")

    def plan_fields(self) -> dict:
        """The fields of shared.schemas.Plan that the planner decides (no version, created_at or
        GPU assignment), reason included."""
        fields = {name: getattr(self, name) for name in Plan.model_fields
                  if name not in NOT_PLANNED and name in type(self).model_fields}
        fields["reason"] = self.reason()
        return fields


class Planner:
    """The exact planner over some rows of a Pareto table: its arrays (per row and batch size)
    are computed once here, and each plan scores every configuration against them at once."""

    def __init__(self, profile: Profile, table: ParetoTable, *, light_share: LightShare = "routed",
                 margin: float = 0.0, batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
                 pairs: list[tuple[str, str]] | None = None, use_spare_gpus: bool = False) -> None:
        if light_share not in ("routed", "all"):
            raise ValueError(f"light_share must be 'routed' or 'all', not {light_share!r}")
        if margin < 0 or not batch_sizes or min(batch_sizes) < 1:
            raise ValueError("margin must be >= 0 and batch sizes >= 1")
        self.profile = profile
        self.light_share = light_share
        self.margin = margin
        self.use_spare_gpus = use_spare_gpus
        self.batch_sizes = np.array(sorted(set(batch_sizes)), dtype=np.int64)
        self.rows = select_rows(table, profile, pairs)
        self._prepare()

    def _prepare(self) -> None:
        rows = self.rows
        r = np.array([row.r for row in rows])
        self.share_h = np.array([row.heavy_share for row in rows])
        self.share_l = np.where(r < 1.0, 1.0 - r if self.light_share == "routed" else 1.0, 0.0)
        self.uses_l = self.share_l > 0
        self.uses_h = self.share_h > 0
        self.chained = np.array([chained(row.r, row.d) for row in rows]) & self.uses_l & self.uses_h
        self.fid = np.array([row.fid for row in rows])
        cache = {name: batch_latencies(self.profile.model(name), self.batch_sizes)
                 for name in {n for row in rows for n in row.pair}}
        self.lat_l = np.stack([cache[row.light_model] for row in rows])
        self.lat_h = np.stack([cache[row.heavy_model] for row in rows])
        self.thr_l = self.batch_sizes / self.lat_l  # qps per GPU; 0 where the batch is not allowed
        self.thr_h = self.batch_sizes / self.lat_h
        single = {name: self.profile.model(name).batch_latency_s(1) for name in cache}
        # The tie-break cost: GPU-seconds per query at batch 1, with this planner's light share.
        self.cost = (self.share_l * np.array([single[row.light_model] for row in rows])
                     + self.share_h * np.array([single[row.heavy_model] for row in rows]))
        # Demand (qps) that one GPU of a tier covers: [row, light batch, 1] and [row, 1, heavy batch].
        self.per_gpu_l = per_gpu(self.thr_l, self.share_l)[:, :, None]
        self.per_gpu_h = per_gpu(self.thr_h, self.share_h)[:, None, :]
        self.path_latency = self._path_latency()
        self.valid = self._valid_batches()
        self.allowed: tuple[bool, ...] | None = None  # allow_rows's mark in force (None: every row)

    def _path_latency(self) -> np.ndarray:
        """[row, light batch, heavy batch]: the longest path a query takes through the batches.
        Chained rows add the two tiers (light, then escalated to heavy); otherwise a query visits
        one tier and the slower tier that gets traffic bounds it."""
        light = np.where(self.uses_l[:, None], self.lat_l, 0.0)[:, :, None]
        heavy = np.where(self.uses_h[:, None], self.lat_h, 0.0)[:, None, :]
        return np.where(self.chained[:, None, None], light + heavy, np.maximum(light, heavy))

    def _valid_batches(self) -> np.ndarray:
        """[row, light batch, heavy batch]: allowed batch sizes; a tier without traffic takes the
        first batch size only, so that its batch never splits ties."""
        first = np.arange(len(self.batch_sizes)) == 0
        light_ok = np.where(self.uses_l[:, None], np.isfinite(self.lat_l), first[None, :])
        heavy_ok = np.where(self.uses_h[:, None], np.isfinite(self.lat_h), first[None, :])
        return light_ok[:, :, None] & heavy_ok[:, None, :]

    # --- planning -----------------------------------------------------------------------------

    def plan(self, demand_qps: float, gpus: int, slo_s: float, queueing_s: float = 0.0) -> PlanDecision:
        started = time.perf_counter()
        demand = demand_qps if demand_qps > 0 else 0.0  # nan and negative estimates count as no demand
        queueing = queueing_s if queueing_s > 0 else 0.0
        gpus = max(int(gpus), 0)
        g_l, g_h = self._min_gpus(demand * (1.0 + self.margin))
        within_slo = self.valid & (self.path_latency + queueing <= slo_s + TIME_SLACK)
        fits = within_slo & (g_l[:, :, None] + g_h[:, None, :] <= gpus)
        if fits.any():
            row, i, j, g_light, g_heavy = self._best_quality(fits, g_l, g_h)
            if self.use_spare_gpus:
                g_light, g_heavy = self._spread(row, i, j, g_light, g_heavy, gpus)
            return self._decision(row, i, j, g_light, g_heavy, feasible=True, started=started)
        return self._decision(*self._highest_capacity(gpus, slo_s, queueing), feasible=False, started=started)

    def plan_within(self, pair: tuple[str, str], light_gpus: int, heavy_gpus: int, demand_qps: float,
                    slo_s: float, queueing_s: float = 0.0) -> PlanDecision | None:
        """The operating point within a structure that stays: the best-quality row of `pair` (its r, d
        and batch sizes, which change without loading a model) that the tiers' current GPUs cover,
        the queueing delay counted against the SLO; failing that, the pair's highest-capacity row
        with those GPUs. None when the table has no row of that pair."""
        started = time.perf_counter()
        of_pair = np.array([row.pair == tuple(pair) for row in self.rows])
        if not of_pair.any():
            return None
        demand = demand_qps if demand_qps > 0 else 0.0
        queueing = queueing_s if queueing_s > 0 else 0.0
        g_l, g_h = self._min_gpus(demand * (1.0 + self.margin))
        usable = self.valid & of_pair[:, None, None]
        within_slo = usable & (self.path_latency + queueing <= slo_s + TIME_SLACK)
        fits = within_slo & (g_l[:, :, None] <= light_gpus) & (g_h[:, None, :] <= heavy_gpus)
        if fits.any():
            row, i, j, _, _ = self._best_quality(fits, g_l, g_h)
            return self._decision(row, i, j, light_gpus, heavy_gpus, feasible=True, started=started)
        shape = self.path_latency.shape
        g_light, g_heavy = np.full(shape, float(light_gpus)), np.full(shape, float(heavy_gpus))
        capacity = self._capacity(g_light, g_heavy)
        for budget in (slo_s - queueing, slo_s):
            allowed = usable & (self.path_latency <= budget + TIME_SLACK)
            if allowed.any():
                picked = self._pick(np.where(allowed, capacity, -np.inf), capacity, g_light, g_heavy)
                return self._decision(*picked, feasible=False, started=started)
        picked = self._pick(np.where(usable, -self.path_latency, -np.inf), capacity, g_light, g_heavy)
        return self._decision(*picked, feasible=False, started=started)

    def _min_gpus(self, demand: float) -> tuple[np.ndarray, np.ndarray]:
        """[row, batch]: the fewest GPUs per tier whose throughput covers that tier's demand
        (at least one for a tier with traffic, none for a tier without); inf where impossible."""
        with np.errstate(divide="ignore", invalid="ignore"):
            need_l = demand * self.share_l[:, None] / self.thr_l
            need_h = demand * self.share_h[:, None] / self.thr_h
        g_l = np.where(self.uses_l[:, None], np.fmax(np.ceil(need_l - GPU_SLACK), 1.0), 0.0)
        g_h = np.where(self.uses_h[:, None], np.fmax(np.ceil(need_h - GPU_SLACK), 1.0), 0.0)
        # 0 / 0 (no demand on a batch size the model may not run) is not a GPU count
        return (np.where(self.uses_l[:, None] & np.isnan(need_l), np.inf, g_l),
                np.where(self.uses_h[:, None] & np.isnan(need_h), np.inf, g_h))

    def _best_quality(self, fits: np.ndarray, g_l: np.ndarray, g_h: np.ndarray) -> tuple:
        """The row with the best (FID, cost, fewest GPUs); within it, the batch sizes with the most
        capacity for those GPUs, then the lowest latency."""
        g_light, g_heavy = self._grid(g_l, g_h)
        total = np.where(fits, g_light + g_heavy, np.inf)
        row_gpus = total.reshape(len(self.rows), -1).min(axis=1)
        candidates = np.flatnonzero(np.isfinite(row_gpus))
        row = int(candidates[np.lexsort((row_gpus[candidates], self.cost[candidates], self.fid[candidates]))[0]])
        at_min = total[row] == row_gpus[row]
        capacity = np.where(at_min, self._capacity(g_light, g_heavy)[row], -np.inf)
        i, j = np.unravel_index(np.lexsort((self.path_latency[row].ravel(), -capacity.ravel()))[0], at_min.shape)
        return row, int(i), int(j), int(g_light[row, i, j]), int(g_heavy[row, i, j])

    def _spread(self, row: int, i: int, j: int, g_light: int, g_heavy: int, gpus: int) -> tuple[int, int]:
        """The GPUs the chosen configuration does not need, given one at a time to the tier with
        the most work per GPU (GPU-seconds per query / GPUs): headroom against bursts and
        estimation error instead of idle GPUs. The row, batches and FID stay the same."""
        work_l = self.share_l[row] / self.thr_l[row, i] if self.uses_l[row] else 0.0
        work_h = self.share_h[row] / self.thr_h[row, j] if self.uses_h[row] else 0.0
        for _ in range(max(gpus - g_light - g_heavy, 0)):
            if work_l / max(g_light, 1e-9) >= work_h / max(g_heavy, 1e-9) and self.uses_l[row]:
                g_light += 1
            elif self.uses_h[row]:
                g_heavy += 1
            else:
                g_light += 1
        return g_light, g_heavy

    def _grid(self, g_l: np.ndarray, g_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[row, batch] GPU counts of each tier as [row, light batch, heavy batch]."""
        shape = self.path_latency.shape
        return np.broadcast_to(g_l[:, :, None], shape), np.broadcast_to(g_h[:, None, :], shape)

    def _capacity(self, g_light: np.ndarray, g_heavy: np.ndarray) -> np.ndarray:
        """[row, light batch, heavy batch]: the demand (qps) these GPUs sustain: the lower of the
        two tiers' throughput divided by the share of the demand that reaches each tier."""
        with np.errstate(divide="ignore", invalid="ignore"):
            light = np.where(self.uses_l[:, None, None], g_light * self.per_gpu_l, np.inf)
            heavy = np.where(self.uses_h[:, None, None], g_heavy * self.per_gpu_h, np.inf)
        return np.minimum(light, heavy)

    def _highest_capacity(self, gpus: int, slo_s: float, queueing: float) -> tuple:
        """Overload: the configuration that serves the most demand with all `gpus`, among those
        within the SLO; failing that, within the SLO without the queueing delay; failing that,
        the fastest one. Ties go to the cheaper row, then the better FID."""
        g_light, g_heavy = split_gpus(gpus, self.per_gpu_l, self.per_gpu_h, self.uses_l, self.uses_h)
        capacity = self._capacity(g_light, g_heavy)
        for budget in (slo_s - queueing, slo_s):
            allowed = self.valid & (self.path_latency <= budget + TIME_SLACK)
            if allowed.any():
                return self._pick(np.where(allowed, capacity, -np.inf), capacity, g_light, g_heavy)
        return self._pick(np.where(self.valid, -self.path_latency, -np.inf), capacity, g_light, g_heavy)

    def _pick(self, primary: np.ndarray, secondary: np.ndarray, g_light: np.ndarray, g_heavy: np.ndarray) -> tuple:
        """The (row, light batch, heavy batch) with the highest `primary`, then the highest
        `secondary`, then the lowest cost, FID and latency."""
        flat = np.flatnonzero(primary.ravel() == primary.max())
        flat = flat[secondary.ravel()[flat] == secondary.ravel()[flat].max()]
        rows = flat // (primary.shape[1] * primary.shape[2])
        best = flat[np.lexsort((self.path_latency.ravel()[flat], self.fid[rows], self.cost[rows]))[0]]
        row, i, j = np.unravel_index(best, primary.shape)
        return int(row), int(i), int(j), int(g_light[row, i, j]), int(g_heavy[row, i, j])

    def _decision(self, row: int, i: int, j: int, g_light: int, g_heavy: int, *, feasible: bool,
                  started: float) -> PlanDecision:
        config = self.rows[row]
        light = g_light * self.per_gpu_l[row, i, 0] if self.uses_l[row] else math.inf
        heavy = g_heavy * self.per_gpu_h[row, 0, j] if self.uses_h[row] else math.inf
        capacity = float(min(light, heavy))
        return PlanDecision(
            light_model=config.light_model, heavy_model=config.heavy_model, r=config.r, d=config.d,
            heavy_share=config.heavy_share, light_batch=int(self.batch_sizes[i]),
            heavy_batch=int(self.batch_sizes[j]), light_gpus=g_light, heavy_gpus=g_heavy, fid=config.fid,
            expected_latency_s=float(self.path_latency[row, i, j]),
            capacity_qps=capacity if math.isfinite(capacity) else 0.0, feasible=feasible,
            solve_ms=(time.perf_counter() - started) * 1000.0)


def allow_rows(planner: Planner, allowed: list[bool] | None) -> None:
    """Let `planner` plan only over the rows marked (None: all of them): the rows that leave room
    for the jobs whose quality forces a tier (shared/policies/quality.py: rows_for). Cheap when the
    mark is the one in force (every planning tick asks). A function: the class is at its size."""
    mask = None if allowed is None or all(allowed) else tuple(allowed)
    if mask == planner.allowed:
        return
    planner.allowed = mask
    planner.valid = planner._valid_batches()
    if mask is not None:
        planner.valid &= np.array(mask)[:, None, None]


def tier_throughputs(profile: Profile, decision: PlanDecision) -> tuple[float, float]:
    """Jobs per second each tier's GPUs process at the decision's batch sizes (the tier's own jobs,
    not the demand it covers): what a burst's escalations can fill (bursts.fill_heavy)."""
    def tier(model: str, batch: int, gpus: int) -> float:
        return gpus * batch / profile.model(model).batch_latency_s(batch) if gpus > 0 else 0.0

    return (tier(decision.light_model, decision.light_batch, decision.light_gpus),
            tier(decision.heavy_model, decision.heavy_batch, decision.heavy_gpus))


def select_rows(table: ParetoTable, profile: Profile, pairs: list[tuple[str, str]] | None) -> list[ParetoRow]:
    """The table's rows of `pairs` (all pairs when None). A function of the inputs alone, run once
    when a planner is built: a pair the table lacks or a model without a latency profile fails
    here, with the names, and never in the middle of a plan."""
    available = table.pairs()
    wanted = available if pairs is None else [tuple(pair) for pair in pairs]
    missing = [pair for pair in wanted if pair not in available]
    if missing:
        raise ValueError(f"pairs {missing} are not in the table of {table.profile}; it has {available}")
    for light, heavy in wanted:
        for name in (light, heavy):
            if not profile.model(name).latency_ms:
                raise ValueError(f"model {name} of profile {profile.name} has no latency profile")
    rows = [row for row in table.rows if row.pair in set(wanted)]
    if not rows:
        raise ValueError("no configurations to plan with")
    return rows


def batch_latencies(model: ModelProfile, batch_sizes: np.ndarray) -> np.ndarray:
    """Seconds per batch for each planner batch size, inf where max_batch forbids it: the inf is
    what keeps a forbidden batch out of every plan (zero throughput, never within the SLO)."""
    return np.array([model.batch_latency_s(int(b)) if model.max_batch is None or b <= model.max_batch
                     else np.inf for b in batch_sizes])


def split_gpus(gpus: int, per_gpu_l: np.ndarray, per_gpu_h: np.ndarray, uses_l: np.ndarray,
               uses_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[row, light batch, heavy batch]: all `gpus` split between the tiers for the highest
    capacity, given the demand one GPU of each tier covers (`per_gpu_l` [row, light batch, 1],
    `per_gpu_h` [row, 1, heavy batch]) and which tiers get traffic. min(g a, (G - g) c) peaks where
    g a = (G - g) c, so the best integer g is the floor or the ceiling of G c / (a + c), kept
    within [1, G - 1]. A cascade needs two GPUs. A function, not a method: the closed form needs
    those arrays and no other planner state, and reads apart from the planner's search."""
    shape = np.broadcast_shapes(per_gpu_l.shape, per_gpu_h.shape)
    both = np.broadcast_to((uses_l & uses_h)[:, None, None], shape)
    alone_l = np.where(uses_l[:, None, None], float(gpus), 0.0)
    alone_h = np.where(uses_h[:, None, None], float(gpus), 0.0)
    if gpus < 2:
        return np.where(both, 0.0, alone_l + np.zeros(shape)), np.where(both, 0.0, alone_h + np.zeros(shape))
    a, c = np.broadcast_arrays(per_gpu_l, per_gpu_h)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = np.nan_to_num(gpus * c / (a + c), nan=1.0, posinf=gpus - 1.0, neginf=1.0)
        low = np.clip(np.floor(crossing), 1, gpus - 1)
        high = np.clip(np.ceil(crossing), 1, gpus - 1)
        low_better = np.minimum(low * a, (gpus - low) * c) >= np.minimum(high * a, (gpus - high) * c)
    split = np.where(low_better, low, high)
    return np.where(both, split, alone_l), np.where(both, gpus - split, alone_h)


def per_gpu(throughput: np.ndarray, share: np.ndarray) -> np.ndarray:
    """[row, batch]: qps of total demand one GPU covers when it serves `share` of it; inf for a
    tier without traffic (it never limits capacity)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(share[:, None] > 0, throughput / share[:, None], np.inf)


# --- admission control ----------------------------------------------------------------------------


def jobs_to_shed(deadlines: np.ndarray, now: float, *, gpus: int, batch: int, batch_latency_s: float) -> np.ndarray:
    """Indices into `deadlines` (the absolute deadlines of one tier's queued jobs) of the jobs to
    shed, earliest deadline first: those that cannot finish in time at this tier's capacity.

    Model: from `now`, the tier's `gpus` workers take the queued jobs in deadline order, `batch` at
    a time, one wave of gpus * batch jobs every `batch_latency_s`; the k-th kept job finishes at
    now + (k // (gpus * batch) + 1) * batch_latency_s. Walking the jobs in deadline order, a job
    that would finish after its deadline is shed and takes no slot. With equal job sizes this
    sheds the fewest jobs for which every kept job meets its deadline under the model (the
    Moore-Hodgson rule for unit jobs). Bound: batches already running are not modelled, so a kept
    job may finish up to one batch latency late; the model never sheds a job that it could have
    served in time. A tier with no GPUs sheds everything it holds: re-route it first."""
    deadlines = np.asarray(deadlines, dtype=float)
    order = np.argsort(deadlines, kind="stable")
    if gpus <= 0 or batch <= 0 or not math.isfinite(batch_latency_s):
        return order
    per_wave = gpus * batch
    waves = np.floor((deadlines[order] - now) / batch_latency_s + TIME_SLACK)
    slots = np.where(waves > 0, waves * per_wave, 0.0)  # jobs that can finish by each deadline
    # kept after the i-th job = min(kept before + 1, slots[i]) = i + min(1, min_{j<=i} slots[j] - j)
    position = np.arange(len(order))
    kept = position + np.minimum(1.0, np.minimum.accumulate(slots - position))
    kept_before = np.concatenate([[0.0], kept[:-1]])
    return order[kept <= kept_before]
