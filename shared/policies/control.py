"""Controller policies: given what the controller observes, the plan it wants (every field of a
Plan except its version and GPU assignment). The controller service and the simulator
(shared/experiments/simulator.py) run the same policies through the same PlanSchedule.

Ours is `hadis`; the others reproduce the systems it is compared with (docs/experiments.md
has a paragraph and the source of each).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from shared.demand import queueing_delay_s
from shared.policies.assignment import assign
from shared.policies.demand import PARTS, SustainedRate
from shared.policies.pareto import ParetoRow, ParetoTable, build_table, load_quality, load_table
from shared.policies.planner import PlanDecision, Planner
from shared.policies.transitions import Structure, Transition, Verdict, stagger, transition, worth_switching
from shared.profiles import Profile, load_profile
from shared.schemas import Plan
from shared.settings import Settings

# The fields that make two plans the same decision (a new version is published only on a change).
DECISION_FIELDS = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus", "heavy_gpus")
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# hadis's lead, in demand holds, when HADIS_PLAN_AHEAD_S is unset: one for the estimate's lag, one
# for a switch, and one because the services were measured to switch about 5 s after the simulator
# on the same ramp (process starts, the store's counter, the replayer).
AHEAD_HOLDS = 3


@dataclass(frozen=True)
class Observation:
    now: float
    demand_qps: float  # the arrival-rate estimate (EWMA), before the safety margin
    queued_jobs: int  # ready messages in the tier and judge queues
    queueing_s: float  # Little's-law wait of a new job behind them
    gpus: int  # GPUs registered by live agents
    current: Plan | None
    arrivals: int = 0  # jobs accepted since the controller started (policies measure their own rates)
    light_queued: int = 0  # ready messages per tier queue
    heavy_queued: int = 0


class ControlPolicy(Protocol):
    name: str
    period_s: float | None  # its own planning period; None: the controller's setting
    degrade_at_once: bool  # a change to a worse-FID (cheaper) plan skips the dwell time

    def decide(self, observation: Observation) -> dict[str, Any]:
        """Plan fields without version, created_at and assignment."""


def same_decision(plan: Plan, fields: dict[str, Any]) -> bool:
    return all(getattr(plan, name) == fields[name] for name in DECISION_FIELDS)


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
            self.decision, self.decided_at = self.policy.decide(observation), now
        fields = dict(self.decision)
        if current is not None and not same_decision(current, fields) and self.dwelling(now, current, fields):
            fields.update({name: getattr(current, name) for name in DECISION_FIELDS})
        keep_draining(fields, observation)
        fields["assignment"] = assign(gpus, fields["light_gpus"], fields["heavy_gpus"],
                                      current.assignment if current else {})
        if current is not None and same_decision(current, fields) and current.assignment == fields["assignment"]:
            return None
        if current is None or not same_decision(current, fields):
            self.last_change = now
        return fields


def keep_draining(fields: dict[str, Any], observation: Observation) -> None:
    """A tier that the plan leaves without GPUs while jobs still wait in its queue (routed or
    escalated under the previous plan, or handed back by a stopping worker) keeps one GPU, taken
    from the other tier, until its queue is empty: otherwise those jobs would never end."""
    queued = {"light": observation.light_queued, "heavy": observation.heavy_queued}
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


class HadisPolicy(PlannerPolicy):
    """Ours, in two layers.

    The structure (model pair, GPUs per tier) is the best-quality row of the whole Pareto table that
    covers the sustained demand plus a margin (shared/policies/demand.py: a burst is not demand),
    with the light tier sized for the prompts routed to it and the GPUs the row does not need given
    to the busier tier as headroom. A new structure replaces the current one only when it pays for
    its transition (shared/policies/transitions.py: the GPUs that load a model serve nothing
    meanwhile).

    The operating point (r, d, batch sizes) is the best-quality row of the structure's pair that its
    GPUs cover with the queue's wait (Little's law) counted against the SLO: it changes without
    loading a model, so it follows a backlog at once. A cheaper plan applies at once, a better one
    waits out the dwell time."""

    name = "hadis"
    degrade_at_once = True
    period_s = 1.0  # every tick: bursts cannot move the structure, and a better plan still waits out the dwell

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        hold = settings.demand_hold_s or settings.slo_s
        self.sustained = SustainedRate(hold, max(settings.demand_window_s or 5 * settings.slo_s, hold))
        self.last_verdict: Verdict | None = None  # the last priced change of structure (logged by the caller)
        self.moving_until = -math.inf  # a staggered switch's step is under way until then
        # A step not yet seen in force: the step, its seconds, and the target it heads for.
        self.proposed: tuple[Structure, float, Structure] | None = None
        # A staggered switch's target while steps remain (set once a step is in force, so a step
        # the dwell held back is not one), and whether the last decision is one of its later
        # steps: the dwell keeps plans from flapping, it does not space out the steps of one
        # switch (PlanSchedule.dwelling), which at a 60 s SLO took 2 minutes a step.
        self.heading: Structure | None = None
        self.continuing = False
        self.recent: deque[tuple[float, float]] = deque()  # (time, demand the structure was chosen for)

    def make_planner(self) -> Planner:
        return Planner(self.profile, load_table(self.settings.profile), light_share=self.settings.planner_light_share,
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)

    def observe(self, observation: Observation) -> None:
        """Every tick (PlanSchedule): the demand estimate needs the arrivals at a finer grain than
        the planning period."""
        self.sustained.observe(observation.now, observation.arrivals)

    def demand(self, observation: Observation) -> float:
        if len(self.sustained.samples) < 2:  # not observed yet (the first tick): the controller's EWMA
            return observation.demand_qps
        return self.sustained.rate()

    def queueing(self, observation: Observation) -> float:
        return queueing_delay_s(observation.queued_jobs, self.demand(observation), cap_s=self.settings.slo_s)

    def ahead(self, demand: float) -> float:
        """The demand the structure is chosen for: the sustained demand plus its sustained rise over
        plan_ahead_s. A structure takes the estimate's lag plus a switch to change, so one chosen for
        today's demand on a ramp is overloaded by the time it serves."""
        lead = self.settings.plan_ahead_s
        lead = AHEAD_HOLDS * self.sustained.hold_s if lead is None else lead
        return demand + self.sustained.trend() * lead

    def decide(self, observation: Observation) -> dict[str, Any]:
        demand, slo = self.demand(observation), self.settings.slo_s
        ahead = self.ahead(demand)
        self.continuing = False
        structure, why = self.structure(ahead, observation)
        if ahead > demand:
            why = f"; structure for {ahead:.3g} qps, the demand rising{why}"
        point = self.planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus, demand, slo,
                                         queueing_s=self.queueing(observation))
        assert point is not None  # structure() keeps only pairs of the table
        fields = point.plan_fields()
        fields["reason"] = f"{fields['reason']}{why}"
        return fields

    def structure(self, demand: float, observation: Observation) -> tuple[Structure, str]:
        """The structure to run: the planner's for the sustained demand, unless the current one is
        worth keeping (its switch would not pay for itself, or the recent estimates disagree)."""
        current = observation.current
        old = Structure.of(current) if current is not None else None
        lowest, highest = self.envelope(observation.now, demand)
        if old is not None and self.proposed is not None and self.proposed[0] == old:
            step, seconds, towards = self.proposed  # the step is in force: it takes its time
            self.moving_until, self.proposed = observation.now + seconds, None
            self.heading = towards if step != towards else None
        if old is not None and 0 < old.light_gpus + old.heavy_gpus <= observation.gpus:
            def serves(value: float) -> bool:
                decision = self.planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, value,
                                                    self.settings.slo_s)
                return decision is not None and decision.feasible

            if serves(highest):
                demand = highest  # a better structure only if every recent estimate allows it
            elif serves(lowest):
                return old, (f"; kept {old.light_model} x{old.light_gpus} -> {old.heavy_model} x{old.heavy_gpus}:"
                             f" it serves {lowest:.3g} qps, the lowest estimate of the last"
                             f" {self.confirm_s:g} s (a change must be confirmed)")
        target = Structure.of(self.planner.plan(demand, observation.gpus, self.settings.slo_s).plan_fields())
        if old is None or target == old:
            self.heading = None
            return target, ""
        keep = self.planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, demand, self.settings.slo_s)
        if keep is None or not 0 < old.light_gpus + old.heavy_gpus <= observation.gpus:
            return target, ""  # a pair this policy does not plan with, GPUs that are gone, or none yet
        if observation.now < self.moving_until:
            if keep.feasible or target.pair == old.pair:
                return old, "; a switch is under way"
            # Falling behind mid-step: the target's pair at once, in place (it restarts no worker);
            # the tier sizes follow once the step is done.
            in_place = Structure(target.light_model, target.heavy_model, old.light_gpus, old.heavy_gpus)
            structure, why = self.priced(old, in_place, keep, demand)
            return structure, f"{why}; while a step is under way" if structure != old else why
        return self.priced(old, target, keep, demand)

    @property
    def confirm_s(self) -> float:
        """How long the estimates must agree before the structure changes (HADIS_PLAN_CONFIRM_S):
        by default a third of the hold (the held rate's part), 20 s at a 60 s SLO, 2 s at 6 s."""
        confirm = self.settings.plan_confirm_s
        return self.sustained.hold_s / PARTS if confirm is None else confirm

    def envelope(self, now: float, demand: float) -> tuple[float, float]:
        """The lowest and highest demand the structure was to be chosen for over the last
        confirm_s (this one included). The structure moves to a better one only if it suits the
        highest, and away from the current one only if that fails even the lowest: a Schmitt
        trigger in time. Without it, at about 1 job/s and a 60 s SLO, the estimate's Poisson noise
        (amplified by the trend's lead) crossed a pair's boundary every few seconds, and each
        crossing after the dwell swapped all 16 GPUs' models and back (71 plans through the
        services on trace_1_6qps, 38 with it)."""
        self.recent.append((now, demand))
        while self.recent and self.recent[0][0] < now - self.confirm_s:
            self.recent.popleft()
        values = [value for _, value in self.recent]
        return min(values), max(values)

    def priced(self, old: Structure, target: Structure, keep: PlanDecision, demand: float) -> tuple[Structure, str]:
        """Keep `old`, or take the first step towards `target`, as the switch's price says
        (shared/policies/transitions.py); the reason, for the plan. The target's quality is what a
        switch is for; its price is the step it takes now (stagger: a few GPUs dark for a few
        seconds), and each later step is priced in its turn. Priced as if every GPU moved at once,
        a structure far from its target was refused for a backlog that no step builds: on
        trace_1to20qps, 13 light GPUs held on for three minutes where the target wanted 1."""
        slo = self.settings.slo_s
        new = self.planner.plan_within(target.pair, target.light_gpus, target.heavy_gpus, demand, slo)
        assert new is not None
        kept = f"; kept {old.light_model} x{old.light_gpus} -> {old.heavy_model} x{old.heavy_gpus}: "
        if keep.feasible and new.fid > keep.fid - self.settings.plan_min_gain_fid:
            # Quality alone, and too little of it to move GPUs for: the operating point adapts instead.
            return old, f"{kept}FID {new.fid:.4g} instead of {keep.fid:.4g} is not worth a switch"
        step = stagger(old, target, self.settings.plan_max_moving_gpus)
        cost = self.transition(old, step)
        serving = cost.serving
        during = self.planner.plan_within(serving.pair, serving.light_gpus, serving.heavy_gpus, demand, slo)
        after = self.planner.plan_within(step.pair, step.light_gpus, step.heavy_gpus, demand, slo)
        assert during is not None and after is not None
        verdict = worth_switching(keep_qps=keep.capacity_qps, new_qps=after.capacity_qps,
                                  during_qps=during.capacity_qps, demand_qps=demand, switch_s=cost.seconds,
                                  horizon_s=self.settings.plan_horizon_s, slack_s=slo - after.expected_latency_s)
        self.last_verdict = verdict
        if not verdict.switch:
            return old, f"{kept}{verdict.why}"
        self.continuing = self.heading == target
        self.proposed = (step, cost.seconds, target)  # the schedule may hold it (dwell) before it is in force
        then = "" if step == target else f"; step towards {target.light_gpus}/{target.heavy_gpus} GPUs"
        return step, (f"; switch: {cost.moving} GPUs loading for {cost.seconds:.3g} s "
                      f"({cost.new_workers} new workers), {verdict.why}{then}")

    def transition(self, old: Structure, new: Structure) -> Transition:
        return transition(old, new, self.profile, worker_start_s=self.settings.worker_start_s,
                          worker_start_each_s=self.settings.worker_start_each_s)


class HadisPaperPolicy(PlannerPolicy):
    """The paper's policy as published: the same tables, but the light tier provisioned for all
    of the demand, demand measured as the mean arrival rate of the last planning period (no
    margin, no queue term), re-planned every 50 s of trace time."""

    name = "hadis-paper"
    period_s = 50.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.window = WindowRate()

    def make_planner(self) -> Planner:
        return Planner(self.profile, load_table(self.settings.profile), light_share="all", margin=0.0,
                       batch_sizes=BATCH_SIZES)

    def demand(self, observation: Observation) -> float:
        return self.window.rate(observation)

    def queueing(self, observation: Observation) -> float:
        return 0.0


def filtered_table(profile: Profile, quality_name: str, keep,
                   pairs: list[tuple[str, str]] | None = None) -> ParetoTable:
    """A Pareto table built from the quality rows that `keep(row)` accepts (ablations and baselines)."""
    quality = load_quality(quality_name)
    rows = [row for row in quality.rows if keep(row) and (pairs is None or (row.light_model, row.heavy_model) in pairs)]
    return build_table(quality.model_copy(update={"rows": rows}), profile)


class AblationPolicy(PlannerPolicy):
    """Our planner over the half of the table that `keeps` selects."""

    @staticmethod
    def keeps(row) -> bool:
        return True

    def make_planner(self) -> Planner:
        table = filtered_table(self.profile, load_table(self.settings.profile).quality_table, self.keeps)
        return Planner(self.profile, table, light_share=self.settings.planner_light_share,
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)


class RouterOnlyPolicy(AblationPolicy):
    """Ablation: the router alone (d = 0), no judge escalation."""

    name = "router-only"

    @staticmethod
    def keeps(row) -> bool:
        return row.d == 0.0


class DiscOnlyPolicy(AblationPolicy):
    """Ablation: the judge alone (r = 0), every prompt tries the light model first."""

    name = "disc-only"

    @staticmethod
    def keeps(row) -> bool:
        return row.r == 0.0


DIFFSERVE_PAIR = ("sd35-large-turbo", "sd35-large")


class DiffServePolicy(PlannerPolicy):
    """DiffServe: one fixed cascade, sd35-large-turbo -> sd35-large, judge only (r = 0); the
    escalation threshold is the largest the demand and the SLO allow (the best FID of the pair's
    judge-only rows), with the same demand estimate and GPU split as ours."""

    name = "diffserve"

    def make_planner(self) -> Planner:
        quality = load_table(self.settings.profile).quality_table
        table = filtered_table(self.profile, quality, lambda row: row.r == 0.0, pairs=[DIFFSERVE_PAIR])
        return Planner(self.profile, table, light_share="all", margin=self.settings.demand_margin,
                       batch_sizes=BATCH_SIZES, use_spare_gpus=True)


class ProteusPolicy(PlannerPolicy):
    """Proteus (accuracy scaling): a mix of model variants, each query served by one model (no
    cascade), chosen to maximise the expected per-query accuracy under the demand. Its objective
    is linear in the shares: FID_est = (1 - x) FID_light + x FID_heavy. Solved exactly by the
    same planner over every two-model split x (and single models) with that objective; the
    services realise a split with the router at r = x. Its mix is scored, like every policy's,
    by the measured FID of what it served."""

    name = "proteus"

    def make_planner(self) -> Planner:
        quality = load_table(self.settings.profile).quality_table
        table = filtered_table(self.profile, quality, lambda row: row.d == 0.0)
        linear = [row.model_copy(update={"fid": self.linear_fid(row)}) for row in table.rows]
        return Planner(self.profile, table.model_copy(update={"rows": linear}), light_share="routed",
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)

    def linear_fid(self, row: ParetoRow) -> float:
        light, heavy = self.profile.model(row.light_model).fid, self.profile.model(row.heavy_model).fid
        if light is None or heavy is None:
            raise ValueError(f"proteus needs the stand-alone FID of {row.light_model} and {row.heavy_model}")
        return round((1.0 - row.r) * light + row.r * heavy, 6)


class SingleModelPolicy:
    """One model on every GPU (no router split, no judge): a single-model plan sends every job
    to the heavy tier (r = 1) with light_model = heavy_model. The batch size is the smallest that
    covers the demand within the SLO, else the one with the most throughput within it."""

    name = "single"
    period_s: float | None = None
    degrade_at_once = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profile = load_profile(settings.profile)
        self.ladder = quality_ladder(settings.profile)

    def plan_for(self, model_name: str, observation: Observation, why: str) -> dict[str, Any]:
        model = self.profile.model(model_name)
        gpus = max(observation.gpus, 1)
        demand = observation.demand_qps * (1.0 + self.settings.demand_margin)
        batch = single_model_batch(self.profile, model_name, demand, gpus, self.settings.slo_s - observation.queueing_s)
        return {"light_model": model_name, "heavy_model": model_name, "r": 1.0, "d": 0.0, "light_batch": 1,
                "heavy_batch": batch, "light_gpus": 0, "heavy_gpus": observation.gpus, "fid": model.fid,
                "reason": f"{self.name}: {model_name} batch {batch} on {observation.gpus} GPUs; {why}"}


def single_model_batch(profile: Profile, model_name: str, demand_qps: float, gpus: int, budget_s: float) -> int:
    model = profile.model(model_name)
    allowed = [b for b in BATCH_SIZES if model.max_batch is None or b <= model.max_batch]
    within = [b for b in allowed if model.batch_latency_s(b) <= budget_s] or allowed[:1]
    covering = [b for b in within if gpus * b / model.batch_latency_s(b) >= demand_qps]
    if covering:
        return covering[0]
    return max(within, key=lambda b: b / model.batch_latency_s(b))


def quality_ladder(profile_name: str) -> list[str]:
    """The profile's models with a measured FID, from the cheapest to the best."""
    profile = load_profile(profile_name)
    models = [m for m in load_table(profile_name).models if profile.model(m).latency_ms]
    return sorted(models, key=lambda m: profile.model(m).batch_latency_s(1))


class ClipperLightPolicy(SingleModelPolicy):
    """Clipper with the lightest model on every GPU (adaptive batching, no model choice)."""

    name = "clipper-light"

    def decide(self, observation: Observation) -> dict[str, Any]:
        return self.plan_for(self.ladder[0], observation, "the lightest model")


class ClipperHeavyPolicy(SingleModelPolicy):
    """Clipper with the best model on every GPU."""

    name = "clipper-heavy"

    def decide(self, observation: Observation) -> dict[str, Any]:
        return self.plan_for(self.ladder[-1], observation, "the best model")


class InfaasAccuracyPolicy(SingleModelPolicy):
    """INFaaS in its accuracy mode: one model variant serves everything; when the expected latency
    (queue wait + batch) exceeds the SLO it steps down to the next cheaper variant, and when it
    is below 0.89 x SLO it steps up to the next better one. It looks at the model it serves,
    not at the one it steps to, so under a load that only a cheaper model can carry it
    oscillates, as the published policy does."""

    name = "infaas-acc"
    STEP_UP_BELOW = 0.89

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.level = len(self.ladder) - 1

    def expected_latency_s(self, level: int, observation: Observation) -> float:
        """Queue wait + batch time, stretched by 1 / (1 - utilisation): a model that cannot keep
        up with the demand on all the GPUs has no finite expected latency."""
        name = self.ladder[level]
        model = self.profile.model(name)
        demand = observation.demand_qps * (1.0 + self.settings.demand_margin)
        gpus = max(observation.gpus, 1)
        batch = single_model_batch(self.profile, name, demand, gpus, self.settings.slo_s)
        utilisation = demand * model.batch_latency_s(batch) / (gpus * batch)
        if utilisation >= 1.0:
            return math.inf
        return observation.queueing_s + model.batch_latency_s(batch) / (1.0 - utilisation)

    def decide(self, observation: Observation) -> dict[str, Any]:
        slo = self.settings.slo_s
        latency = self.expected_latency_s(self.level, observation)
        if latency > slo and self.level > 0:
            self.level, why = self.level - 1, f"expected {latency:.2f} s > SLO: step down"
        elif latency < self.STEP_UP_BELOW * slo and self.level < len(self.ladder) - 1:
            self.level, why = self.level + 1, f"expected {latency:.2f} s < {self.STEP_UP_BELOW} x SLO: step up"
        else:
            why = f"expected {latency:.2f} s: hold"
        return self.plan_for(self.ladder[self.level], observation, why)


POLICIES: dict[str, type] = {
    "static": StaticPolicy,
    "hadis": HadisPolicy,
    "hadis-paper": HadisPaperPolicy,
    "router-only": RouterOnlyPolicy,
    "disc-only": DiscOnlyPolicy,
    "diffserve": DiffServePolicy,
    "proteus": ProteusPolicy,
    "infaas-acc": InfaasAccuracyPolicy,
    "clipper-light": ClipperLightPolicy,
    "clipper-heavy": ClipperHeavyPolicy,
}
COMPARED = [name for name in POLICIES if name != "static"]


def make_policy(settings: Settings) -> ControlPolicy:
    return POLICIES[settings.controller_policy](settings)

