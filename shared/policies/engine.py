"""The engine core: how the single rules (shared/policies/admission.py, judge.py, control.py,
shared/arrival_rate.py) combine into the decisions of the router, the worker, the judge and the
controller. The services (services/*.py) and the simulator (shared/experiments/simulator.py) both
call these functions, in the way vLLM's engine core serves its process wrapper: the services keep
only the I/O around them (the broker, the store, the clock they read), the simulator its event
loop. Written once, the combination cannot drift between the two: it did (the controller counted
the judge's queue as queued demand, the simulator did not), and an experiment then disagreed with
its simulation for reasons that were no policy's. tests/policies/test_engine_replay.py feeds both
paths the same inputs and requires the same decisions.

Pure: plain values and a clock reading in, a decision out; no I/O, no store, no bus."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TypeVar

from shared.arrival_rate import queueing_delay_s
from shared.policies import classes
from shared.policies import quality as quality_rules
from shared.policies.admission import (
    HANDOFF_S,
    BatchTimer,
    Fallback,
    HeavyRoom,
    batch_ends_at,
    beyond_pace,
    ends_too_late,
    heavy_share_qps,
    heavy_tier_qps,
    light_can_make,
    light_tier_qps,
    may_escalate,
    may_route_heavy,
    profiled_batch_s,
    too_late_fallback,
)
from shared.policies.control import Observation
from shared.policies.judge import JudgeCalibration
from shared.policies.transitions import load_s
from shared.profiles import Profile
from shared.schemas import Plan, Priority, Tier

T = TypeVar("T")


class BatchTimes:
    """The profile's batch times at one scale (the services: Settings.latency_scale; the simulator,
    whose workers are emulated: time_scale), cached: every decision that prices a batch it has
    not measured reads them here, so the router, the worker, the judge and the simulator price it
    alike."""

    def __init__(self, profile: Profile, scale: float) -> None:
        self.profile = profile
        self.scale = scale
        self._seconds: dict[tuple[str, int], float] = {}

    def seconds(self, model: str, size: int) -> float:
        key = (model, size)
        if key not in self._seconds:
            self._seconds[key] = profiled_batch_s(self.profile.model(model), size, self.scale)
        return self._seconds[key]

    def light(self, plan: Plan) -> float:
        """A batch of the plan's light tier."""
        return self.seconds(plan.light_model, plan.light_batch)

    def heavy(self, plan: Plan) -> float:
        """A batch of the plan's heavy tier."""
        return self.seconds(plan.heavy_model, plan.heavy_batch)

    def load(self, model: str) -> float:
        return load_s(self.profile, model)


# --- the router ---------------------------------------------------------------------------------


class Route(NamedTuple):
    tier: Tier
    heavy_full: bool  # the score chose heavy, and the heavy tier had no room for the router's share
    burst: bool = False  # the score chose heavy, and the arrivals were a burst the plan's r was not for
    held_for: str | None = None  # the burst guard sent it light, whatever its score: held_point (verdict)


def route(score: float, threshold: float, plan: Plan, room: HeavyRoom, now: float, deadline: float,
          times: BatchTimes, arrived: int = 0, light_room: HeavyRoom | None = None) -> Route:
    """The tier for a prompt whose score is `score`: heavy from the plan's threshold on, when the
    router's share of the heavy tier still clears it by its deadline (HeavyRoom); the light tier
    otherwise. While the router's own arrivals (`arrived` over the last second, ArrivalPace) are
    beyond the plan's burst_qps (beyond_pace), every job takes the light path while the light tier
    still ends it in time (`light_room`, at the tier's whole throughput; without one, always): a
    plan made in a silence would send its r of a burst's first second, before the controller's next
    tick, to the heavy tier, whose places the burst's escalations (the judge's worst images) need.
    Beyond the light tier's room the score decides, as without a burst: a slow light tier (a
    silence's sd35-medium) needs the heavy GPUs' help. A plan without a light tier of its own
    sends it to heavy all the same."""
    if beyond_pace(arrived, plan.burst_qps) and may_route_heavy(plan):
        light_s = times.light(plan)
        if light_room is None or light_room.admit(now, deadline, light_tier_qps(plan, light_s), light_s):
            return Route(Tier.light, False, burst=score >= threshold, held_for=held_point(plan))
    if score < threshold:
        return Route(Tier.light, False)
    if not may_route_heavy(plan):
        return Route(Tier.heavy, False)
    heavy_s = times.heavy(plan)
    if room.admit(now, deadline, heavy_share_qps(plan, heavy_s, Tier.light), heavy_s):
        return Route(Tier.heavy, False)
    return Route(Tier.light, True)


def forced_route(quality: str, plan: Plan, room: HeavyRoom, now: float, deadline: float,
                 times: BatchTimes) -> Route | str | None:
    """The tier a job's quality forces (shared/policies/quality.py): None when the prompt's score
    decides (`route`); the light tier for `low`; the heavy tier for `high` when it can still end the
    job by its deadline (HeavyRoom, at the router's share of the heavy tier, which the plan's r sized
    for the high jobs too; the whole tier's throughput under a plan with r = 0, made before any high
    job was seen), else the reason it is refused (quality.heavy_refusal)."""
    tier = quality_rules.forced_tier(quality)
    if tier is None:
        return None
    if tier is Tier.light:
        return Route(Tier.light, False)
    heavy_s = times.heavy(plan)
    share = heavy_share_qps(plan, heavy_s, Tier.light)
    if share <= 0 and plan.heavy_gpus > 0:
        share = plan.heavy_gpus * plan.heavy_batch / heavy_s if heavy_s > 0 else math.inf
    admitted = plan.heavy_gpus > 0 and room.admit(now, deadline, share, heavy_s)
    refusal = quality_rules.heavy_refusal(plan, admitted, heavy_s)
    return refusal if refusal is not None else Route(Tier.heavy, False)


# --- the worker ---------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """What one worker has committed its GPU to: when the batches it has admitted end (its own
    estimate), the model of the last one (the model loaded once they have run), and the batch
    times it has measured. Admission reads it to time the next batch."""

    busy_until: float = 0.0
    model: str = ""
    timer: BatchTimer = field(default_factory=BatchTimer)

    def batch_end(self, now: float, model: str, size: int, *, loaded: str, times: BatchTimes) -> float:
        """When a batch of `size` admitted now for `model` would end: after the batches admitted
        before it, a model load when the model before it is another (the last admitted batch's
        while batches are pending, else `loaded`, the one loaded now), and its own time (as
        measured here, else as profiled)."""
        previous = self.model if self.busy_until > now else loaded
        batch_s = self.timer.expected(model, size, times.seconds(model, size))
        return batch_ends_at(now=now, busy_until=self.busy_until, batch_s=batch_s, model=model,
                             previous_model=previous, load_s=times.load(model))

    def commit(self, ends_at: float, model: str) -> None:
        """A batch was admitted (at least one of its jobs is in time)."""
        self.busy_until, self.model = ends_at, model


def split_late(items: Iterable[T], ends_at: float, deadline: Callable[[T], float]) -> tuple[list[T], list[T]]:
    """The items of a batch that ends at `ends_at`: those that can still make their deadline, and
    those that cannot (each goes to `fallback`), both in their order."""
    in_time: list[T] = []
    late: list[T] = []
    for item in items:
        (late if ends_too_late(ends_at, deadline(item)) else in_time).append(item)
    return in_time, late


def fallback(plan: Plan, tier: Tier, escalated: bool, now: float, deadline: float, times: BatchTimes,
             quality: str = "auto") -> Fallback:
    """What becomes of a job that `tier` cannot finish by its deadline: an escalated one is served
    its light image, a heavy one the router sent goes to the light tier when a light batch started
    now still makes it, any other is shed; so is a `high` job on the heavy tier (heavy only)."""
    heavy_only = quality_rules.forced_tier(quality) is Tier.heavy
    return too_late_fallback(tier, escalated, light_can_make(plan, times.light(plan), now, deadline), heavy_only)


# --- the worker's classes (shared/policies/classes.py; services/classes_intake.py) ----------------


class InFlight(NamedTuple):
    """A batch admitted to a worker's GPU and not ended, in the order admitted: its service class
    and when admission expected it to end."""

    priority: Priority
    ends_at: float


def interactive_free_at(now: float, ahead: Iterable[InFlight]) -> float:
    """When the GPU would be free of the interactive batches ahead if every batch-class one were
    stopped now: each interactive batch keeps its own length (its end less the end of the batch
    before it, or less now for the one running), in their order."""
    free_at, before = now, now
    for batch in ahead:
        length = max(batch.ends_at - max(before, now), 0.0)
        before = max(before, batch.ends_at)
        if batch.priority != "batch":
            free_at += length
    return free_at


def batch_class_yields(mode: classes.YieldMode, now: float, ahead: list[InFlight], interactive_batch_s: float,
                       interactive_deadline: float | None, batch_first: bool = False) -> bool:
    """Whether the batch-class batches admitted to a GPU (running or queued behind the running one)
    are stopped for an interactive job that has just arrived, `interactive_batch_s` the batch it will
    join: classes.should_yield, with "now" the time the GPU is free of the interactive batches ahead
    (interactive_free_at) and the running end the end of everything admitted. Never on a GPU that
    takes batch first (Plan.batch_first: reserved because batch deadlines come near). The worker and
    the simulator both ask here, so that they stop the same batches."""
    if batch_first or not any(batch.priority == "batch" for batch in ahead):
        return False
    busy_until = max(batch.ends_at for batch in ahead)
    return classes.should_yield(mode, interactive_free_at(now, ahead), busy_until, interactive_batch_s,
                                interactive_deadline)


# --- the judge ----------------------------------------------------------------------------------


class Verdict(StrEnum):
    escalate = "escalate"  # among the lowest d: the heavy tier makes it again
    accept = "accept"  # done with the light image
    too_late = "too_late"  # among the lowest d, but a heavy batch would end after the deadline: the light image


def verdict(calibration: JudgeCalibration, score: float, plan: Plan, now: float, deadline: float,
            times: BatchTimes, room: HeavyRoom, held_for: str | None = None) -> Verdict:
    """The judge's decision on one light image: escalate the lowest fraction d of the scores (the
    calibration's percentile, before this score joins it) when a heavy batch started now still
    ends by the deadline; d and r as the plan applies them to the cascade's own jobs
    (quality.for_auto_jobs). For a job the burst guard sent light (`held_for`: Route.held_for), the
    lowest r + (1 - r) d, the plan's whole heavy share, while the plan's point is still the one the
    guard held (held_point) and the heavy tier has room (guarded_escalation; `room`: the judge's
    escalations in it). The score joins the calibration whatever the verdict."""
    auto = quality_rules.for_auto_jobs(plan)
    low = calibration.escalate(score, auto.d)
    extra = (held_for is not None and not low and held_for == held_point(plan)
             and calibration.escalate(score, auto.heavy_share))
    calibration.observe(score)
    if not low and not extra:
        return Verdict.accept
    heavy_s = times.heavy(auto)
    if not may_escalate(now, heavy_s, deadline):
        return Verdict.too_late if low else Verdict.accept
    if low:
        room.fill(now, heavy_tier_qps(auto, heavy_s))
        return Verdict.escalate
    return Verdict.escalate if guarded_escalation(room, auto, now, deadline, heavy_s) else Verdict.accept


def held_point(plan: Plan) -> str:
    """What the burst guard held a job against: the plan's structure and r, whose router share of the
    heavy tier the guard left unused (verdict). A plan that has changed either since was made with
    the burst seen, and its heavy tier is for its own r: on seed 507 the judge, whose burst images
    came late, sent a hundred more to the next plan's heavy tier (sd35-large-turbo), and the jobs
    that plan routed there fell back to an overrun light tier (7.5 % missed). A d the burst raised
    keeps the point (hadis.fill_heavy)."""
    return f"{plan.light_model} x{plan.light_gpus} -> {plan.heavy_model} x{plan.heavy_gpus}, r {plan.r:g}"


def guarded_escalation(room: HeavyRoom, plan: Plan, now: float, deadline: float, heavy_s: float) -> bool:
    """Whether the judge escalates a job the burst guard sent light (Route.held_for) beyond the plan's
    d: onto a place the heavy tier would leave idle, its batch starting before one batch on every
    heavy GPU has ended (HeavyRoom at the tier's whole throughput, after the judge's escalations so
    far; those within d fill it whatever its backlog), and ending by the deadline. The guard holds
    the router's r back from a heavy tier that a burst's first second would flood, before the
    controller has seen the burst; a light batch later the judge can fill the places left with the
    burst's worst images. With d alone the onsets of on/off seed 703 (sdxl-lightning ->
    sd35-large-turbo, r 0.7, d 0.1: over half its jobs) went 10-13 % heavy and ended 0.9 FID worse
    than the rest of its bursts. Queued up to the deadline, they would take the places of the
    escalations within d, whose scores come later in the burst."""
    starts_by = now + heavy_s + HANDOFF_S  # by when the batches on the heavy GPUs now have ended
    return room.admit(now, min(deadline, starts_by + heavy_s), heavy_tier_qps(plan, heavy_s), heavy_s)


# --- the controller -----------------------------------------------------------------------------


def observation(now: float, rate_qps: float, light_queued: int, heavy_queued: int, gpus: int,
                current: Plan | None, arrivals: int, slo_s: float,
                mix: quality_rules.QualityMix | None = None,
                batch_queued: Mapping[Tier, int] | None = None) -> Observation:
    """What the controller's policy sees. Queued demand is the jobs waiting in the two tier
    queues: a new job waits behind them for a GPU, and the planner takes that wait (Little's law,
    capped at the SLO) from its budget. The judge's queue is not counted: its jobs have been
    generated and do not hold a new job back (the judge has its own thread, not a GPU), and the
    heavy work their escalations will add is already in the demand (the plan's heavy share
    h = r + (1 - r) d of the arrivals). Counting them made the services plan against a wait that
    no job has, and differ from the simulator, which has no judge queue. `mix`: the shares of the
    arrivals whose quality forces a tier (quality.observed_mix), planned for on top of the cascade.
    `batch_queued`: the batch-class queues' depths by tier, which plan nothing but keep a tier that
    holds batch work from being left without a GPU (control.keep_draining)."""
    queued = light_queued + heavy_queued
    batch = batch_queued or {}
    return Observation(now, rate_qps, queued, queueing_delay_s(queued, rate_qps, cap_s=slo_s), gpus, current,
                       arrivals=arrivals, light_queued=light_queued, heavy_queued=heavy_queued,
                       mix=mix or quality_rules.QualityMix(), light_batch_queued=batch.get(Tier.light, 0),
                       heavy_batch_queued=batch.get(Tier.heavy, 0))

