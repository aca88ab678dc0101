"""Controller policies: given what the controller observes, the plan it wants (every field of a
Plan except its version and GPU assignment). The controller service and the simulator
(shared/experiments/simulator.py) run the same policies through the same PlanSchedule.

This module holds what every policy shares: the observation, the schedule, the static policy and
the planner-backed base. Ours is `hadis` (shared/policies/hadis.py); the others reproduce the
systems it is compared with (shared/policies/baselines.py; docs/experiments.md has a paragraph and
the source of each); shared/policies/catalog.py names them all.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from shared.policies import quality
from shared.policies.assignment import assign
from shared.policies.planner import Planner, allow_rows
from shared.policies.quality import QualityMix
from shared.profiles import load_profile
from shared.schemas import Plan
from shared.settings import Settings

# The fields that make two plans the same decision (a new version is published only on a change).
DECISION_FIELDS = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus", "heavy_gpus")
# And the forced quality shares the plan was made for (shared/policies/quality.py; 0 when absent).
SHARE_FIELDS = ("low_share", "high_share")
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# How far the burst guard's level may drift before the plan is published again (same_guard): at 1.5
# the bursty traces published twice the plans of before (azure_code_8x 116 against 48), at 2 1.8x.
GUARD_DRIFT = 2.0


@dataclass(frozen=True)
class Observation:
    now: float
    demand_qps: float  # the arrival-rate estimate (EWMA), before the safety margin
    queued_jobs: int  # ready messages in the two tier queues (not the judge's: engine.observation says why)
    queueing_s: float  # Little's-law wait of a new job behind them
    gpus: int  # GPUs registered by live agents
    current: Plan | None
    arrivals: int = 0  # jobs accepted since the controller started (policies measure their own rates)
    light_queued: int = 0  # ready messages per tier queue
    heavy_queued: int = 0
    light_batch_queued: int = 0  # ready messages per tier's batch-class queue (keep_draining reads them only)
    heavy_batch_queued: int = 0
    mix: QualityMix = QualityMix()  # the shares of arrivals whose quality forces a tier


class ControlPolicy(Protocol):
    name: str
    period_s: float | None  # its own planning period; None: the controller's setting
    degrade_at_once: bool  # a change to a worse-FID (cheaper) plan skips the dwell time

    def decide(self, observation: Observation) -> dict[str, Any]:
        """Plan fields without version, created_at and assignment."""


def same_decision(plan: Plan, fields: dict[str, Any]) -> bool:
    """Whether `fields` decide what `plan` does: the same point (same_point) and burst guard
    (same_guard)."""
    return same_point(plan, fields) and same_guard(plan.burst_qps, fields.get("burst_qps"))


def same_point(plan: Plan, fields: dict[str, Any]) -> bool:
    """Whether `fields` hold the plan's structure, operating point and forced shares: what the dwell
    spaces out (a new guard alone is published at once and restarts no dwell)."""
    return (all(getattr(plan, name) == fields[name] for name in DECISION_FIELDS)
            and all(getattr(plan, name) == fields.get(name, 0.0) for name in SHARE_FIELDS))


def same_guard(held: float | None, wanted: float | None) -> bool:
    """Whether the plan's burst guard (Plan.burst_qps) is still the one wanted: both unset, or both
    set within a factor of GUARD_DRIFT. Its level drifts with the demand every tick, and a version
    a tick would churn the plans; held at its level until the point changes, a guard set just after
    a burst, at twice the demand's tail, let the next burst out of a silence through."""
    if held is None or wanted is None:
        return held is None and wanted is None
    return max(held, wanted) <= GUARD_DRIFT * max(min(held, wanted), 1e-9)


class PlanSchedule:
    """When the policy is asked (every planning period) and when its decision may replace the
    current plan: a planned change waits out a minimum dwell time (re-planning faster than a
    model swap completes makes plans flap); a change of GPUs applies at once."""

    def __init__(self, policy: ControlPolicy, period_s: float, min_dwell_s: float) -> None:
        self.policy = policy
        self.period_s = policy.period_s or period_s
        self.min_dwell_s = min_dwell_s
        self.decision: dict[str, Any] | None = None
        self.decided_at = -math.inf
        self.last_change = -math.inf

    def dwelling(self, now: float, current: Plan, fields: dict[str, Any]) -> bool:
        if now - self.last_change >= self.min_dwell_s:
            return False
        if getattr(self.policy, "continuing", False):  # a later step of a switch whose first is in force
            return False
        if getattr(self.policy, "overloaded", False):  # its highest capacity, wanted now: no flapping to fear
            return False
        cheaper = (fields.get("fid") or 0.0) > (current.fid or math.inf)
        return not (self.policy.degrade_at_once and cheaper)

    def step(self, observation: Observation, current: Plan | None, gpus: list[str]) -> dict[str, Any] | None:
        """The plan fields to publish now (assignment included), or None when nothing changes. With
        no GPUs at all the current plan stays: a plan that serves nothing is never published."""
        now = observation.now
        observe = getattr(self.policy, "observe", None)  # a policy that measures every tick (hadis's demand)
        if observe is not None:
            observe(observation)
        if not gpus and current is not None:
            return None
        if self.decision is None or now - self.decided_at >= self.period_s:
            mix = quality.settled_mix(quality.mix_of(current), observation.mix) if current else observation.mix
            with_mix(self.policy, mix)
            self.decision, self.decided_at = self.policy.decide(observation), now
            self.decision.update(low_share=mix.low, high_share=mix.high)
        fields = dict(self.decision)
        if current is not None and not same_point(current, fields) and self.dwelling(now, current, fields):
            fields.update({name: getattr(current, name) for name in (*DECISION_FIELDS, *SHARE_FIELDS)})
        keep_draining(fields, observation)
        fields["assignment"] = assign(gpus, fields["light_gpus"], fields["heavy_gpus"],
                                      current.assignment if current else {})
        if current is not None and same_decision(current, fields) and current.assignment == fields["assignment"]:
            return None
        if current is None or not same_point(current, fields):
            self.last_change = now
        return fields


def with_mix(policy: ControlPolicy, mix: QualityMix) -> None:
    """Before a policy decides: its planner plans over the rows that leave room for the forced
    shares (shared/policies/quality.py: rows_for), so the plan's r holds the high jobs and its light
    images not escalated the low ones. A policy without a planner (static) plans nothing."""
    planner = getattr(policy, "planner", None)
    if isinstance(planner, Planner):
        rows = [(row.pair, row.r, row.d) for row in planner.rows]
        allow_rows(planner, quality.rows_for(rows, mix) if mix.low > 0 or mix.high > 0 else None)


def keep_draining(fields: dict[str, Any], observation: Observation) -> None:
    """A tier that the plan leaves without GPUs while jobs still wait in its queue (routed or
    escalated under the previous plan, or handed back by a stopping worker) keeps one GPU, taken
    from the other tier, until its queue is empty: otherwise those jobs would never end. Its
    batch-class queue counts too (docs/classes.md): a batch job placed under a plan that gave the
    tier GPUs is bound to it, and would otherwise wait, unserved, until its deadline."""
    queued = {"light": observation.light_queued + observation.light_batch_queued,
              "heavy": observation.heavy_queued + observation.heavy_batch_queued}
    for tier, other in (("light", "heavy"), ("heavy", "light")):
        if fields[f"{tier}_gpus"] == 0 and queued[tier] > 0 and fields[f"{other}_gpus"] > 1:
            fields[f"{tier}_gpus"], fields[f"{other}_gpus"] = 1, fields[f"{other}_gpus"] - 1
            fields["reason"] = f"{fields.get('reason', '')}; draining the {tier} queue"


class StaticPolicy:
    """No automatic changes: the plan from settings when the controller starts, then whatever
    plan is current (an operator's `hadis set-plan` sticks)."""

    name = "static"
    period_s = None
    degrade_at_once = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = False

    def decide(self, observation: Observation) -> dict[str, Any]:
        plan = self.settings.static_plan(version=0)
        if self.started and observation.current is not None:
            plan = observation.current
        self.started = True
        return plan.model_dump(exclude={"version", "created_at", "assignment"})


class PlannerPolicy(ABC):
    """A policy that asks the exact planner (shared/policies/planner.py) over some table rows."""

    name = "planner"
    period_s: float | None = None
    degrade_at_once = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profile = load_profile(settings.profile)
        self.planner = self.make_planner()

    @abstractmethod
    def make_planner(self) -> Planner:
        """The planner over this policy's table rows."""

    def demand(self, observation: Observation) -> float:
        return observation.demand_qps

    def queueing(self, observation: Observation) -> float:
        return observation.queueing_s

    def decide(self, observation: Observation) -> dict[str, Any]:
        return self.plan_for(self.demand(observation), observation)

    def plan_for(self, demand: float, observation: Observation) -> dict[str, Any]:
        decision = self.planner.plan(demand, observation.gpus, self.settings.slo_s,
                                     queueing_s=self.queueing(observation))
        fields = decision.plan_fields()
        fields["reason"] = fields["reason"].replace("hadis planner", f"{self.name} planner", 1)
        return fields


class WindowRate:
    """Arrivals per second over the last `span_s` seconds of decisions (or, with no span, since
    the previous decision: the paper's estimate)."""

    def __init__(self, span_s: float | None = None) -> None:
        self.span_s = span_s
        self.samples: deque[tuple[float, int]] = deque()

    def rate(self, observation: Observation) -> float:
        now, arrivals = observation.now, observation.arrivals
        if self.span_s is None:
            while len(self.samples) > 1:
                self.samples.popleft()
        else:
            while len(self.samples) > 1 and self.samples[1][0] <= now - self.span_s:
                self.samples.popleft()
        oldest = self.samples[0] if self.samples else None
        self.samples.append((now, arrivals))
        if oldest is None or now <= oldest[0]:
            return observation.demand_qps
        return (arrivals - oldest[1]) / (now - oldest[0])
