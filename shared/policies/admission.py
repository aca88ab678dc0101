"""Admission at the worker and the judge: how many batches a worker commits to, whether a job can
still end by its deadline if it joins the batch being formed, what becomes of one that cannot, and
whether an escalation can still finish. The services and the simulator use this module, so that
both shed, reroute and escalate the same jobs."""

from __future__ import annotations

import math
from collections import deque
from enum import StrEnum

from shared.arrival_rate import beyond_poisson
from shared.policies.pareto import heavy_share
from shared.profiles import ModelProfile
from shared.schemas import Plan, Tier

# Batches admitted to the model at once: the one generating and the next, queued behind it on the
# model's thread. A deeper pipeline commits jobs to this GPU that an idle GPU could serve sooner.
PIPELINE_DEPTH = 2
# Deliveries a worker holds (its prefetch, in batches): the two admitted batches and one being
# collected. A larger prefetch parks jobs in a busy worker's buffer while another worker idles.
PREFETCH_BATCHES = 3
# Time a job still needs after its batch: PNG encoding, the store write and, for a light image,
# the judge. A job admitted without it would end a few milliseconds late.
HANDOFF_S = 0.1
# The span over which a router counts its own arrivals against the plan's burst_qps: the
# controller's tick, the delay the router bridges until a plan made for the burst arrives.
PACE_SPAN_S = 1.0
# How far beyond the plan's burst_qps a router's count must be, in standard deviations of a Poisson
# count at that rate: a one-second count is noisy (at 2 jobs/s it exceeds 4 one second in twenty,
# and a ramp's routing would be held at random), where a burst of 10x the mean is far beyond.
PACE_SIGMAS = 3.0


class BatchTimer:
    """How long a batch takes on this worker: the last measurement per (model, batch size)."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, int], float] = {}

    def observe(self, model: str, size: int, seconds: float) -> None:
        self._seconds[(model, size)] = seconds

    def expected(self, model: str, size: int, prior_s: float = 0.0) -> float:
        """From the nearest batch size measured (scaled up linearly for a larger batch); the
        prior (the profile's figure) until this model has been measured here."""
        known = [(s, seconds) for (m, s), seconds in self._seconds.items() if m == model]
        if not known:
            return prior_s
        nearest_size, seconds = min(known, key=lambda entry: abs(entry[0] - size))
        return seconds * size / nearest_size if nearest_size < size else seconds


def batch_ends_at(*, now: float, busy_until: float, batch_s: float, model: str, previous_model: str,
                  load_s: float = 0.0) -> float:
    """When a batch admitted now for `model` ends: once the batches admitted before it have ended
    (`busy_until`, the worker's own estimate), after a model load when theirs was another (a batch
    runs with the model it was admitted for: the swap comes between batches), plus its own time."""
    return max(busy_until, now) + (load_s if model != previous_model else 0.0) + batch_s


def ends_too_late(batch_ends_at: float, deadline: float) -> bool:
    """A job whose batch would end at `batch_ends_at` cannot be done by `deadline`."""
    return batch_ends_at + HANDOFF_S >= deadline


def profiled_batch_s(model: ModelProfile, size: int, scale: float) -> float:
    """The profile's time for a batch, times `scale` (emulated models sleep it; real ones take 1):
    0 when the profile has no latencies (nothing is then refused for lack of time)."""
    return model.batch_latency_s(size) * scale if model.latency_ms else 0.0


class Fallback(StrEnum):
    """What becomes of a job its GPU cannot finish by the deadline."""

    serve_light = "serve_light"  # an escalated job: the light image it already has becomes its result
    to_light = "to_light"  # a job the router sent straight to heavy: the light tier, which can still make it
    expire = "expire"  # shed: the GPU's time goes to jobs that can still make their deadline


def light_can_make(plan: Plan, light_batch_s: float, now: float, deadline: float) -> bool:
    """A light batch started now would end in time, and the plan has a distinct light tier."""
    if plan.light_gpus == 0 or plan.light_model == plan.heavy_model:
        return False
    return not ends_too_late(now + light_batch_s, deadline)


def too_late_fallback(tier: Tier, escalated: bool, light_in_time: bool, heavy_only: bool = False) -> Fallback:
    """The one rule for a job that would end too late on `tier` (the worker and the simulator). A
    job that asked for the heavy model only (quality `high`) is shed, never given a light image it
    did not ask for: its caller learns it expired and may ask again at another quality."""
    if tier is Tier.heavy and heavy_only:
        return Fallback.expire
    if tier is Tier.heavy and escalated:
        return Fallback.serve_light
    if tier is Tier.heavy and light_in_time:
        return Fallback.to_light
    return Fallback.expire


def may_route_heavy(plan: Plan) -> bool:
    """Only a plan with a light tier of its own can send a job there instead of to the heavy tier."""
    return plan.light_gpus > 0 and plan.light_model != plan.heavy_model


def may_escalate(now: float, heavy_batch_s: float, deadline: float) -> bool:
    """The judge escalates a low score only when a heavy batch started now ends before the
    deadline; otherwise the light image is served (the judge and the simulator)."""
    return now + heavy_batch_s < deadline


def heavy_share_qps(plan: Plan, heavy_batch_s: float, sender: Tier) -> float:
    """The heavy tier's throughput (jobs/s) that one sender may fill: the router's share is r / h of
    it, the judge's (1 - r) d / h (h = r + (1 - r) d, the plan's heavy share); 0 without heavy GPUs."""
    if plan.heavy_gpus <= 0:
        return 0.0
    if heavy_batch_s <= 0:
        return math.inf  # no latency profile (tiny models): nothing is refused for lack of time
    heavy = plan.r + (1.0 - plan.r) * plan.d
    if heavy <= 0:
        return 0.0
    share = plan.r / heavy if sender is Tier.light else (1.0 - plan.r) * plan.d / heavy
    return plan.heavy_gpus * plan.heavy_batch / heavy_batch_s * share


def carried_qps(r: float, d: float, light_qps: float, heavy_qps: float) -> float:
    """The demand (jobs/s) a point (r, d) carries on its tiers' throughputs (jobs/s each): the light
    tier takes the 1 - r the router sends it, the heavy tier r + (1 - r) d; the lower of the two
    (the planner's capacity, for a point whose d a burst raised). inf when neither tier limits it."""
    heavy = heavy_share(r, d)
    light_cap = light_qps / (1.0 - r) if r < 1.0 else math.inf
    heavy_cap = heavy_qps / heavy if heavy > 0 else math.inf
    return min(light_cap, heavy_cap)


def heavy_tier_qps(plan: Plan, heavy_batch_s: float) -> float:
    """The heavy tier's throughput (jobs/s), at which the judge's room clears its escalations
    (engine.verdict); 0 without heavy GPUs, unbounded without a latency profile."""
    if plan.heavy_gpus <= 0:
        return 0.0
    if heavy_batch_s <= 0:
        return math.inf
    return plan.heavy_gpus * plan.heavy_batch / heavy_batch_s


def light_tier_qps(plan: Plan, light_batch_s: float) -> float:
    """The light tier's throughput (jobs/s), at which the router's light room clears what it sent
    light in a burst (engine.route); 0 without light GPUs, unbounded without a latency profile."""
    if plan.light_gpus <= 0:
        return 0.0
    if light_batch_s <= 0:
        return math.inf
    return plan.light_gpus * plan.light_batch / light_batch_s


class HeavyRoom:
    """Degrade inside the SLO, before the heavy queue: the backlog the router has put in the heavy
    tier, as a fluid that the tier clears at the router's share of its throughput (heavy_share_qps
    with `Tier.light`). A job the score sends to heavy goes there only when, once that backlog has
    cleared, one heavy batch and the handoff still end before its deadline; otherwise it takes the
    light path. In a burst's first second the plan's r still sent its fraction to the slow
    model, where it waited until its worker saw it was late. The backlog is this process's only:
    several routers each fill the share as if alone (docs/planner.md). The judge does not admit its
    escalations within d by it: they are few and spread out, and with it the smooth ramps lost 0.2
    FID in the simulator; it keeps may_escalate for them. It keeps one of its own at the heavy tier's
    whole throughput, which those escalations fill (`fill`), for the ones beyond d of a burst the
    guard held (engine.guarded_escalation). The router keeps a second one for the light tier, filled
    only by the jobs it sends light while a burst holds its routing (engine.route): whether the
    light tier, at its whole throughput, still ends them in time."""

    def __init__(self) -> None:
        self.backlog = 0.0
        self.at = -math.inf

    def admit(self, now: float, deadline: float, share_qps: float, heavy_batch_s: float) -> bool:
        if share_qps <= 0:
            return False
        if math.isinf(share_qps):
            return True
        self.drain(now, share_qps)
        if now + self.backlog / share_qps + heavy_batch_s + HANDOFF_S >= deadline:
            return False
        self.backlog += 1.0
        return True

    def fill(self, now: float, share_qps: float) -> None:
        """One job sent to the tier whatever the backlog (the judge's escalations within d)."""
        if 0 < share_qps < math.inf:
            self.drain(now, share_qps)
            self.backlog += 1.0

    def drain(self, now: float, share_qps: float) -> None:
        if now > self.at:
            self.backlog = max(self.backlog - share_qps * (now - self.at), 0.0)
            self.at = now


class ArrivalPace:
    """The interactive jobs one router has seen over the last PACE_SPAN_S: what it holds against the plan's
    burst_qps (beyond_pace, engine.route). The controller sees a burst only at its next tick, and
    a plan made in a silence routes its r of the burst's first second to the heavy tier, where
    those jobs take the places of the escalations the burst's own point would send (the judge's
    worst images). Counted per router: with k routers behind one queue each sees about 1/k of the
    arrivals, so a burst must be k times as steep before one of them holds its routing."""

    def __init__(self, span_s: float = PACE_SPAN_S) -> None:
        self.span_s = span_s
        self.times: deque[float] = deque()

    def arrived(self, now: float) -> int:
        """Count a job arriving at `now`; the jobs arrived over the span that ends then."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.span_s:
            self.times.popleft()
        return len(self.times)


def beyond_pace(arrived: int, burst_qps: float | None, span_s: float = PACE_SPAN_S) -> bool:
    """Whether `arrived` jobs in `span_s` are a burst beyond `burst_qps` (None: never): more than
    its expected count by PACE_SIGMAS Poisson deviations."""
    return burst_qps is not None and beyond_poisson(arrived, burst_qps * span_s, PACE_SIGMAS)


def pace_tripping_at(carried_qps: float, span_s: float = PACE_SPAN_S) -> float:
    """The guard (jobs/s) that beyond_pace trips at a count of `carried_qps` x `span_s` jobs: x with
    x + PACE_SIGMAS * sqrt(max(x, 1)) = that count (0 below the margin of one). A plan guarding at
    what its point carries holds the routing from there on, not PACE_SIGMAS deviations later."""
    count = carried_qps * span_s
    root = (-PACE_SIGMAS + math.sqrt(PACE_SIGMAS ** 2 + 4.0 * count)) / 2.0
    expected = root * root if root >= 1.0 else count - PACE_SIGMAS
    return max(expected, 0.0) / span_s
