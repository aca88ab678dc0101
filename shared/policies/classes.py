"""The service classes (docs/classes.md): interactive work, which a person waits for, and batch work,
which nobody watches, on one fleet. The interactive class is planned as before, for its sustained
demand and its SLO (shared/policies/planner.py); it never sees the batch class's demand. The batch
class takes what the interactive plan leaves: the idle time of every GPU, at the best model that
the leftover allows (the heavy tier's, wherever its leftover covers the backlog by its deadlines),
and, only when its deadlines come near and the leftover cannot meet them, GPUs reserved for it
(at most Settings.batch_weight of the fleet), said in a metric and the log.

Pure: the controller (services/controller.py), the router, the workers and the simulator call
these rules, so that both place, order and yield the same jobs."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.policies import quality as quality_rules
from shared.policies.admission import ends_too_late
from shared.schemas import Plan, Priority, Tier

# The horizons (seconds from now) at which the controller counts the batch jobs due: a backlog due
# by each must fit the capacity the batch class has until then.
BACKLOG_HORIZONS_S: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)

# A placement is published as a new plan version only when it moves this much (Plan.batch_heavy), or
# its reserved GPUs change, or its heavy share reaches an end (0 or 1): not every planning round.
MATERIAL_HEAVY_STEP = 0.05
# A reservation starts at the last responsible moment, this long before it: GPUs are taken from
# interactive work only when the backlog could not end in time otherwise even if the most the
# weight allows were reserved from then on. Sooner costs interactive quality for nothing when the
# interactive load falls before the deadlines (a trace's end, the night); later leaves no margin for
# a leftover that shrinks meanwhile. A few planning rounds.
RESERVE_LEAD_S = 60.0

# Queued batch jobs follow the placement (rebalance): moved between the tiers' batch queues only when
# the queues are off the placement's heavy share by more than this many jobs and this share of them
# (no churn for a rounding), and at most MOVE_LIMIT in a planning round (each move is a broker get, a
# store write and a confirmed publish: the controller's round stays well under a second).
# Jobs move from the heavy queue to the light one this long before the light tier would need the
# whole time left to serve what the heavy one cannot (urgent_heavy): two planning periods of the
# reservation's lead, since a move, unlike a reservation, takes nothing from interactive work.
MOVE_LEAD_S = 2 * RESERVE_LEAD_S
MOVE_SLACK_JOBS = 8
MOVE_SLACK_SHARE = 0.05
MOVE_LIMIT = 200

# How a running batch-class batch gives way to interactive work that arrives behind it:
# "pause": it is paused at its next denoising step and resumes from that step once no interactive
# job waits on its GPU (nothing lost; a model that cannot pause, or one whose process restarted
# meanwhile, runs it again from its first step);
# "step": it is stopped at its next denoising step (its jobs go back to the batch queue; the steps
# run are lost);
# "finish": it always runs to its end (no work lost; interactive jobs wait up to one batch).
YieldMode = Literal["pause", "step", "finish"]
# Which batch-class work a GPU takes next: a batch it paused, its own tier's batch queue, or, on a
# light GPU holding the heavy model beside its own (guest_tier), the heavy tier's batch queue.
BatchSource = Literal["paused", "own", "guest"]


@dataclass(frozen=True)
class Backlog:
    """The batch jobs not yet ended, by deadline: `due[i]` jobs have their deadline within
    `horizons[i]` seconds of the reading (cumulative, so non-decreasing); `total` all of them."""

    horizons: tuple[float, ...]
    due: tuple[int, ...]
    total: int

    @staticmethod
    def empty() -> Backlog:
        return Backlog(BACKLOG_HORIZONS_S, tuple(0 for _ in BACKLOG_HORIZONS_S), 0)

    def points(self) -> list[tuple[float, int]]:
        """(horizon, jobs due by then), with the whole backlog at the last horizon at the latest:
        a job due later still needs serving, and none may wait for ever."""
        points = list(zip(self.horizons, self.due, strict=True))
        if points and self.total > points[-1][1]:
            points[-1] = (points[-1][0], self.total)
        return points


def backlog_of(deadlines: Iterable[float], now: float, horizons: tuple[float, ...] = BACKLOG_HORIZONS_S) -> Backlog:
    """The Backlog of the batch jobs not yet ended with these deadlines, read at `now` (the store
    counts its sorted set the same way: Store.batch_backlog; the simulator counts its own jobs)."""
    ordered = sorted(deadlines)
    due = tuple(sum(1 for deadline in ordered if deadline <= now + horizon) for horizon in horizons)
    return Backlog(tuple(horizons), due, len(ordered))


@dataclass(frozen=True)
class BatchPlacement:
    """Where the batch class runs under a plan: its heavy share (Plan.batch_heavy), the GPUs that
    take batch first (Plan.batch_first), and why (the log, the metric)."""

    heavy: float
    first: tuple[str, ...]
    reason: str
    queued_heavy: float = 1.0  # the heavy share the queued batch jobs must have now (urgent_heavy)

    @property
    def reserved(self) -> int:
        return len(self.first)


def per_image_s(plan: Plan, tier: Tier, batch_s: Callable[[str, int], float]) -> float:
    """Seconds of one GPU per image on the tier, at the plan's batch size."""
    size = plan.batch_for(tier)
    return batch_s(plan.model_for(tier), size) / size


def tier_gpus(plan: Plan, tier: Tier) -> int:
    return plan.light_gpus if tier is Tier.light else plan.heavy_gpus


def leftover_gpus(plan: Plan, demand_qps: float, batch_s: Callable[[str, int], float]) -> dict[Tier, float]:
    """GPUs' worth (GPU-seconds per second) that each tier is expected to leave idle by the
    interactive class: its GPUs less its interactive load (demand x its share x the seconds of GPU
    an image takes at the plan's batch). The slack inside the plan is the batch class's: a plan
    made for 1.2x the demand, or with a tier at half load, leaves it idle otherwise."""
    shares = {Tier.light: 1.0 - plan.r if plan.light_gpus > 0 else 0.0, Tier.heavy: plan.heavy_share}
    left: dict[Tier, float] = {}
    for tier, share in shares.items():
        gpus = tier_gpus(plan, tier)
        busy = demand_qps * share * per_image_s(plan, tier, batch_s) if gpus > 0 else 0.0
        left[tier] = max(gpus - busy, 0.0)
    return left


def place_batch(plan: Plan, demand_qps: float, backlog: Backlog, batch_s: Callable[[str, int], float],
                weight: float, colocate: bool = False) -> BatchPlacement:
    """The heavy share of the batch class and its reserved GPUs, for the backlog's deadlines.

    The heavy tier's model is the better one: every batch job goes there while, at every horizon,
    the heavy tier's leftover can serve the jobs due by then. The share it cannot serve goes to the
    light tier's leftover. What neither covers by a horizon is a shortfall: the fewest GPUs (at most
    `weight` of the fleet, never a tier's last) whose interactive time covers it are reserved, their
    workers taking batch first. They are light GPUs when the plan has a light tier of its own: the
    jobs that the heavy leftover cannot serve are the light tier's, and near their deadlines a GPU
    serves most of them with the light model (heavy GPUs, at 10x the seconds an image, would cover
    a tenth of the shortfall each). With no backlog nothing changes (heavy 1.0, nothing reserved).

    With `colocate` (Settings.batch_colocate: light GPUs serve heavy batch work with the heavy model
    beside their own, guest_tier), the light tier's leftover is heavy capacity too: every job goes
    to the heavy tier's queue while both leftovers together cover the backlog at the heavy model's
    cost; when they do not, the light leftover is the light model's again, as without it."""
    points = [(horizon, due) for horizon, due in backlog.points() if due > 0]
    if not points:
        return BatchPlacement(1.0, (), "no batch backlog")
    left = leftover_gpus(plan, demand_qps, batch_s)
    cost = {tier: per_image_s(plan, tier, batch_s) for tier in Tier}
    guests = left[Tier.light] if guest_tier(Tier.light, colocate) is Tier.heavy and plan.heavy_gpus > 0 else 0.0
    if guests > 0 and cost[Tier.heavy] > 0 and served_share(points, left[Tier.heavy] + guests, cost[Tier.heavy]) >= 1:
        return BatchPlacement(1.0, (), f"batch backlog {backlog.total}: heavy 1.00, leftover GPUs heavy "
                                       f"{left[Tier.heavy]:.1f} and light {guests:.1f} with the heavy model")
    heavy = heavy_share(plan, points, left[Tier.heavy], cost[Tier.heavy])
    tier = Tier.light if heavy < 1.0 and plan.light_gpus > 0 else Tier.heavy
    busy = 1.0 - left[tier] / tier_gpus(plan, tier) if tier_gpus(plan, tier) > 0 else 0.0
    later = len(reserve(plan, math.inf, weight, tier, busy)) * busy  # the most a later reservation adds
    short = shortfall_gpus(points, heavy, left, cost, later)
    reserved = reserve(plan, short, weight, tier, busy)
    if reserved:  # their interactive time becomes the batch class's (interactive work waits for the rest)
        left = {**left, tier: left[tier] + len(reserved) * busy}
        heavy = heavy_share(plan, points, left[Tier.heavy], cost[Tier.heavy])
    reason = (f"batch backlog {backlog.total}: heavy {heavy:.2f}, leftover GPUs heavy {left[Tier.heavy]:.1f} "
              f"light {left[Tier.light]:.1f}")
    if short > 0:
        still = shortfall_gpus(points, heavy, left, cost)
        reason += f"; short {short:.1f} GPUs by its deadlines, {len(reserved)} {tier.value} reserved"
        reason += f", {still:.1f} still short (weight {weight:g})" if still > 0 else ""
    reservable = later if tier is Tier.light and not reserved else 0.0
    queued = heavy if heavy < 1.0 and moving_is_urgent(plan, points, left, cost, reservable) else 1.0
    reason += f"; queued jobs to light, down to heavy {heavy:.2f}" if queued < 1.0 else ""
    return BatchPlacement(round(heavy, 3), reserved, reason, round(queued, 3))


def moving_is_urgent(plan: Plan, points: Sequence[tuple[float, int]], left: dict[Tier, float],
                     cost: dict[Tier, float], reservable: float = 0.0) -> bool:
    """Whether the batch jobs already queued must now be brought to the placement's heavy share
    (rebalance), at the last responsible moment: once, at some horizon, the most the light tier
    could give the batch class (its leftover, and the `reservable` GPUs' worth a reservation may
    still take from interactive work) would need all but MOVE_LEAD_S of it to serve the jobs that
    the heavy tier's leftover cannot serve by then. The leftover is measured at the load of the
    moment, which can fall before the deadlines (a trace's end, the night): moving earlier sends to
    the light model jobs that the heavy one would have served in time (trace_1to40qps with hadis,
    5,000 batch jobs due in 15 minutes: batch FID 24.86 instead of 20.61 when only the leftover
    counted, 23.29 when the queues followed the placement at once)."""
    if plan.light_gpus <= 0 or plan.heavy_gpus <= 0 or cost[Tier.heavy] <= 0:
        return False
    light_gpus = left[Tier.light] + reservable
    for horizon, due in points:
        excess = due - left[Tier.heavy] * horizon / cost[Tier.heavy]
        if excess <= 0:
            continue
        light_s = excess * cost[Tier.light] / light_gpus if light_gpus > 0 else math.inf
        if light_s >= horizon - MOVE_LEAD_S:
            return True
    return False


def heavy_share(plan: Plan, points: Sequence[tuple[float, int]], heavy_left: float, heavy_cost: float) -> float:
    """The share of the batch jobs that `heavy_left` GPUs of the heavy tier serve by every horizon
    (1 when the plan has no light tier of its own, 0 when it has no heavy GPU)."""
    if plan.heavy_gpus <= 0:
        return 0.0
    if plan.light_gpus <= 0 or plan.light_model == plan.heavy_model or heavy_cost <= 0:
        return 1.0
    return served_share(points, heavy_left, heavy_cost)


def served_share(points: Sequence[tuple[float, int]], gpus: float, cost: float) -> float:
    """The share of the jobs due by every horizon that `gpus` GPUs at `cost` seconds an image serve
    by then (at most 1)."""
    return min([1.0] + [gpus * horizon / cost / due for horizon, due in points])


def shortfall_gpus(points: Sequence[tuple[float, int]], heavy: float, left: dict[Tier, float],
                   cost: dict[Tier, float], later_gpus: float = 0.0) -> float:
    """The GPUs' worth to reserve now so that, at heavy share `heavy`, the jobs due by each horizon
    are served by then (the most over the horizons; 0 when none must be reserved yet): what the
    leftover lacks over the horizon, less what `later_gpus` reserved from RESERVE_LEAD_S on would
    add, spread over the lead. With later_gpus 0 (or a horizon within the lead), the whole lack
    spread over the horizon: reserve now."""
    short = 0.0
    for horizon, due in points:
        need = due * (heavy * cost[Tier.heavy] + (1.0 - heavy) * cost[Tier.light])
        have = (left[Tier.heavy] if heavy > 0 else 0.0) + (left[Tier.light] if heavy < 1 else 0.0)
        lacking = need - have * horizon
        deferred = later_gpus * max(horizon - RESERVE_LEAD_S, 0.0)
        if lacking <= deferred:
            continue
        short = max(short, (lacking - deferred) / min(RESERVE_LEAD_S, horizon) if deferred > 0 else lacking / horizon)
    return short


def reserve(plan: Plan, shortfall_gpus: float, weight: float, tier: Tier = Tier.heavy,
            busy: float = 1.0) -> tuple[str, ...]:
    """The GPUs of `tier` that take batch first to cover a shortfall, each giving the batch class
    its `busy` share of interactive time: the last of the tier's GPUs first, at most `weight` of
    the fleet, never the tier's last (interactive work keeps a GPU of each tier)."""
    if shortfall_gpus <= 0 or busy <= 0:
        return ()
    gpus = sorted(gpu for gpu, assigned in plan.assignment.items() if assigned is tier)
    most = min(math.floor(weight * len(plan.assignment) + 1e-9), len(gpus) - 1)
    wanted = most if math.isinf(shortfall_gpus) else min(math.ceil(shortfall_gpus / busy - 1e-9), most)
    return tuple(gpus[len(gpus) - wanted:]) if wanted > 0 else ()


def batch_tier(plan: Plan, draw: float) -> Tier:
    """The tier of a batch job, `draw` in [0, 1) being its own (job_draw hashes the job id, so a
    redelivery lands where the first delivery did); never a tier the plan gives no GPU."""
    if plan.light_gpus <= 0:
        return Tier.heavy
    if plan.heavy_gpus <= 0:
        return Tier.light
    return Tier.heavy if draw < plan.batch_heavy else Tier.light


@dataclass(frozen=True)
class Move:
    """Batch jobs to move from the head of one tier's batch queue to the other's."""

    source: Tier
    target: Tier
    count: int


def rebalance(plan: Plan, queued_heavy: float, queued: Mapping[Tier, int], limit: int = MOVE_LIMIT,
              all_heavy: bool = False) -> Move | None:
    """The queued batch jobs to move from the heavy tier's batch queue to the light one's so that
    the heavy queue holds no more than `queued_heavy` of them (BatchPlacement.queued_heavy), or
    None. A batch job is placed when it arrives, but the heavy leftover it was placed for can
    shrink: without this, a backlog placed on the heavy tier while the load was low stays there
    when the load rises, and expires in the queue while light GPUs idle or, reserved for it, find
    an empty queue (diffserve, trace_1to40qps with 5,000 batch jobs: 1,470 deadlines missed).
    Moves go from the head of the queue (the earliest deadlines, the jobs at risk).

    Back to the heavy tier only once the placement is all heavy again (`all_heavy`: its leftover,
    the light GPUs' heavy model beside theirs included, covers the whole backlog at every horizon):
    the leftover that moved them was the load of the moment, and the load fell before their
    deadlines (trace_1to40qps through the services: 800 jobs moved at the trace's peak, then made
    by the light model in the quiet minutes after it, batch FID 21.35 where every other run had
    20.61). While the placement still gives the light tier a share, never back: a job is there
    because the heavy tier could not serve it in time, and moving it back would send it to the tail
    of a queue it may have to leave again. Only between two tiers of two models that both have
    GPUs: a tier without any keeps one while its queue drains (control.keep_draining). Jobs whose
    quality forces their tier stay (the mover puts them back)."""
    total = queued.get(Tier.light, 0) + queued.get(Tier.heavy, 0)
    if total == 0 or plan.light_gpus <= 0 or plan.heavy_gpus <= 0 or plan.light_model == plan.heavy_model:
        return None
    if all_heavy:
        back = queued.get(Tier.light, 0)
        return Move(Tier.light, Tier.heavy, min(back, limit)) if back > MOVE_SLACK_JOBS else None
    excess = queued.get(Tier.heavy, 0) - queued_heavy * total
    if excess <= max(MOVE_SLACK_JOBS, MOVE_SLACK_SHARE * total):
        return None
    return Move(Tier.heavy, Tier.light, min(int(excess), limit))


def movable(quality: str, source: Tier) -> bool:
    """Whether a queued batch job may leave `source` (rebalance): not when its quality forces that tier."""
    return quality_rules.forced_tier(quality) is not source


def job_draw(job_id: str) -> float:
    """A job's own number in [0, 1): the same for every delivery of it, on every router (a hash of
    its id, not Python's per-process hash())."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def moved(plan: Plan | None, placement: BatchPlacement) -> bool:
    """Whether a placement differs materially from the one the plan carries: its heavy share by
    MATERIAL_HEAVY_STEP or to an end (0, 1), or its reserved GPUs."""
    if plan is None:
        return True
    step = abs(plan.batch_heavy - placement.heavy)
    return (step >= MATERIAL_HEAVY_STEP - 1e-9 or (step > 0 and placement.heavy in (0.0, 1.0))
            or sorted(plan.batch_first) != sorted(placement.first))


def next_class(interactive_waiting: int, batch_waiting: int, batch_first: bool) -> Priority | None:
    """Which class a worker's next batch is formed from: interactive first, batch when no
    interactive job waits; on a GPU reserved for batch, the other way round."""
    order: Sequence[tuple[int, Priority]] = ((interactive_waiting, "interactive"), (batch_waiting, "batch"))
    if batch_first:
        order = tuple(reversed(order))
    for waiting, priority in order:
        if waiting > 0:
            return priority
    return None


def guest_tier(tier: Tier, colocate: bool) -> Tier | None:
    """The other tier whose batch queue a GPU of `tier` also takes from, with that tier's model kept
    loaded beside its own: a light GPU takes heavy batch work (Settings.batch_colocate), a heavy one
    nothing. The light tier's idle time is most of what the interactive plan leaves (the GPUs it
    holds ready for a burst: docs/classes.md); spent with the light model it would give batch work
    the light model's images, which the batch class has no reason to take. Never the other way: a
    heavy GPU running the light model would do the same."""
    return Tier.heavy if colocate and tier is Tier.light else None


def batch_source(paused: bool, own_waiting: int, guest_waiting: int) -> BatchSource | None:
    """Where a GPU's next batch-class batch comes from: the batch it paused first (its claims are
    held and its steps run are kept: it is the oldest work on the GPU), then its own tier's batch
    queue (placed there by the controller, classes.place_batch), then the guest queue
    (guest_tier)."""
    if paused:
        return "paused"
    if own_waiting > 0:
        return "own"
    if guest_waiting > 0:
        return "guest"
    return None


def resumed_s(batch_s: float, step: int, steps: int) -> float:
    """How long a batch of `batch_s` seconds has left when it resumes after `step` of its `steps`
    (a model's steps take equal time: the emulated worker's do, a diffusion model's nearly)."""
    if steps <= 0:
        return batch_s
    return batch_s * max(steps - min(max(step, 0), steps), 0) / steps


def should_yield(mode: YieldMode, now: float, running_ends_at: float, interactive_batch_s: float,
                 interactive_deadline: float | None) -> bool:
    """Whether a running batch-class batch is stopped at its next step for the interactive job
    now waiting behind it (the earliest deadline of those waiting): in "pause" and "step" modes, whenever that
    job can still end in time if served now. Not only when it would be late behind the batch: an
    interactive job that waits, even in time, delays the ones behind it, the tier's queue grows and
    the controller plans the cascade down (trace_1to40qps in the simulator, 5,000 batch jobs:
    interactive FID +0.31 with the narrower rule, +0.00 with this one, at 260 GPU-seconds of batch
    steps lost instead of 42; `running_ends_at` is kept for a rule that weighs the loss)."""
    if mode == "finish" or interactive_deadline is None:
        return False
    return not ends_too_late(now + interactive_batch_s, interactive_deadline)
