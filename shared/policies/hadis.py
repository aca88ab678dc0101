"""Ours: the `hadis` controller policy (docs/planner.md, "The controller")."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from shared.arrival_rate import queueing_delay_s
from shared.policies.admission import carried_qps, pace_tripping_at
from shared.policies.bursts import BurstHistory, burst_horizon, burst_rate, fill_heavy
from shared.policies.control import BATCH_SIZES, Observation, PlannerPolicy
from shared.policies.pareto import load_table
from shared.policies.planner import PlanDecision, Planner, tier_throughputs
from shared.policies.readiness import Readiness
from shared.policies.sustained_demand import PARTS, SustainedRate
from shared.policies.transitions import Structure, Transition, Verdict, stagger, transition, worth_switching
from shared.profiles import Profile
from shared.settings import Settings

# hadis's lead, in demand holds, when HADIS_PLAN_AHEAD_S is unset: one for the estimate's lag, one
# for a switch, and one because the services were measured to switch about 5 s after the simulator
# on the same ramp (process starts, the store's counter, the replayer).
AHEAD_HOLDS = 3
# A structure whose operating point was infeasible on the last tick, with this share of the SLO
# already waiting in its queue, is behind: the demand estimates that it still serves are no reason
# to keep it (HadisPolicy.behind).
BEHIND_SLO_SHARE = 0.25
# The operating point follows the arrivals of the last third of the SLO once they are this many
# times the sustained demand: a burst, not the Poisson noise of a few seconds' count.
BURST_FACTOR = 2.0


class HadisPolicy(PlannerPolicy):
    """Ours, in two layers (docs/planner.md). The structure (model pair, GPUs per tier) is the
    planner's for the sustained demand plus its rise (shared/policies/sustained_demand.py: a burst is
    not demand), or the one ready for the remembered bursts (readiness.py); a new one replaces the
    current one only when it pays for its transition (transitions.py). The operating point (r, d,
    batch sizes) is the best-quality row of the structure's pair that its GPUs cover, the queue's
    wait counted against the SLO: it changes without loading a model, so it follows a backlog (and,
    in a burst, the backlog its slack can take) at once; a cheaper one applies at once, a better one
    after the dwell."""

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
        # A staggered switch's target while steps remain (set once a step is in force), and whether
        # the last decision is one of its later steps: the dwell does not space out one switch's steps.
        self.heading: Structure | None = None
        self.continuing = self.overloaded = False
        confirm = settings.plan_confirm_s  # by default a third of the hold (the held rate's part)
        self.envelope = DemandEnvelope(self.sustained.hold_s / PARTS if confirm is None else confirm)
        halflife = settings.burst_memory_s or 30 * settings.slo_s
        self.bursts = BurstHistory(halflife_s=halflife, memory_s=3 * halflife)
        self.readiness = Readiness(self.planner, settings.slo_s, settings.plan_risk, settings.burst_prior, self.bursts)
        self.arriving = math.inf  # the arrivals a switch must serve through: until measured, all of its demand
        self.for_bursts = False  # whether the last tick held a structure for the remembered bursts (ready_for_bursts)

    def make_planner(self) -> Planner:
        return Planner(self.profile, load_table(self.settings.profile), light_share=self.settings.planner_light_share,
                       margin=self.settings.demand_margin, batch_sizes=BATCH_SIZES, use_spare_gpus=True)

    def observe(self, observation: Observation) -> None:
        """Every tick (PlanSchedule): the demand estimate needs the arrivals at a finer grain than
        the planning period."""
        self.sustained.observe(observation.now, observation.arrivals)
        self.bursts.observe(observation.now, observation.arrivals, self.sustained.rate())

    def demand(self, observation: Observation) -> float:
        if len(self.sustained.samples) < 2:  # not observed yet (the first tick): the controller's EWMA
            return observation.demand_qps
        return self.sustained.rate()

    def queueing(self, observation: Observation) -> float:
        """The wait behind the queue at the rate jobs arrive (not the sustained demand: a burst's queue
        read at the silence's rate as a full SLO's wait)."""
        rate = max(self.demand(observation), self.arriving if math.isfinite(self.arriving) else 0.0)
        return queueing_delay_s(observation.queued_jobs, rate, cap_s=self.settings.slo_s)

    def ahead(self, demand: float) -> float:
        """The demand the structure is chosen for: the sustained demand plus its sustained rise over
        plan_ahead_s. A structure takes the estimate's lag plus a switch to change, so one chosen for
        today's demand on a ramp is overloaded by the time it serves."""
        return demand + self.sustained.trend() * self.lead

    @property
    def lead(self) -> float:
        """How far ahead the structure is chosen: what it takes to change it (plan_ahead_s)."""
        lead = self.settings.plan_ahead_s
        return AHEAD_HOLDS * self.sustained.hold_s if lead is None else lead

    def decide(self, observation: Observation) -> dict[str, Any]:
        demand, slo = self.demand(observation), self.settings.slo_s
        ahead = self.ahead(demand)
        if demand <= self.bursts.left_level(self.lead, self.sustained.hold_s / PARTS):
            ahead = demand  # a level the demand has been at and left: a burst's rise, no ramp to extrapolate
        # The operating point changes for free: it follows the arrivals of the last SLO at once when
        # they are a burst (BURST_FACTOR x the sustained demand), where the structure waits.
        recent = self.bursts.recent_rate(slo)
        now = recent if recent > BURST_FACTOR * max(demand, 1.0) else demand
        self.arriving = max(now, demand)  # what a switch must serve through (priced)
        if self.outrun(observation):
            ahead = max(ahead, self.arriving)  # a burst the structure cannot ride out: chosen for as if it lasted
        self.continuing = False
        # Ready for the remembered bursts when the structure for the sustained demand is not: then the
        # replay, which holds the rise so far, sizes it, and a burst's rise is not extrapolated.
        held = Structure.of(observation.current) if observation.current is not None else None
        ready, ready_why = ready_for_bursts(self.readiness, demand, observation.gpus, ahead, held, self.for_bursts)
        self.for_bursts = ready is not None
        structure, why = self.structure(demand if ready is not None else ahead, observation, ready)
        if ready is not None:
            why = f"{ready_why}{why}"
        elif ahead > demand:
            why = f"; structure for {ahead:.3g} qps, the demand rising{why}"
        point, fields = operating_point(self.readiness, structure, observation, now, self.arriving,
                                        self.queueing(observation), burst=ready is not None or self.bursting())
        fields["burst_qps"] = burst_guard(now, point, fields, self.profile)
        self.overloaded = not point.feasible
        fields["reason"] = f"{fields['reason']}{why}"
        return fields

    def structure(self, demand: float, observation: Observation,
                  ready: Structure | None = None) -> tuple[Structure, str]:
        """The structure to run: the planner's for the sustained demand (or `ready`, the one ready for
        the remembered bursts), unless the current one is worth keeping (its switch would not pay for
        itself, or the recent estimates disagree, or it is ready too and nearly as good)."""
        current = observation.current
        old = Structure.of(current) if current is not None else None
        lowest, highest = self.envelope.update(observation.now, demand)
        if old is not None and self.proposed is not None and self.proposed[0] == old:
            step, seconds, towards = self.proposed  # the step is in force: it takes its time
            self.moving_until, self.proposed = observation.now + seconds, None
            self.heading = towards if step != towards else None
        if ready is not None:
            if old is not None and (kept := still_ready(self.readiness, old, ready, demand, observation.gpus,
                                                        self.settings.plan_min_gain_fid, self.arriving,
                                                        self.lead, observation.queued_jobs)) is not None:
                return old, kept
        elif old is not None and old.runs_on(observation.gpus):
            def serves(value: float) -> bool:
                decision = self.planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, value,
                                                    self.settings.slo_s)
                return decision is not None and decision.feasible

            if serves(highest):
                demand = highest  # a better structure only if every recent estimate allows it
            elif serves(lowest) and not self.behind(observation):
                return old, (f"; kept {layout(old)}: it serves {lowest:.3g} qps, the lowest estimate of the last"
                             f" {self.confirm_s:g} s (a change must be confirmed)")
            elif why := absorbed(self.readiness, old, demand, self.arriving, self.lead, observation.gpus,
                                observation.queued_jobs):
                return old, why
        target = ready or Structure.of(self.planner.plan(demand, observation.gpus, self.settings.slo_s).plan_fields())
        if old is None or target == old:
            self.heading = None
            return target, ""
        keep = self.planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, demand, self.settings.slo_s)
        if keep is None or not old.runs_on(observation.gpus):
            return target, ""  # a pair this policy does not plan with, GPUs that are gone, or none yet
        if observation.now < self.moving_until:
            if keep.feasible or target.pair == old.pair:
                return old, "; a switch is under way"
            if why := absorbed(self.readiness, old, demand, self.arriving, self.lead, observation.gpus,
                                observation.queued_jobs):
                return old, f"{why}; a switch is under way"
            # Falling behind mid-step: the target's pair at once, in place (it restarts no worker);
            # the tier sizes follow once the step is done.
            in_place = Structure(target.light_model, target.heavy_model, old.light_gpus, old.heavy_gpus)
            structure, why = self.priced(old, in_place, keep, demand)
            return structure, f"{why}; while a step is under way" if structure != old else why
        if (not keep.feasible and target.pair != old.pair
                and target.split != old.split):
            # Behind: the target's pair at once on the GPUs as they are (a model load each, no worker
            # restarts), where moving GPUs between tiers takes steps of worker starts; the split
            # follows in later steps. A burst out of a silence met the silence's pair for 10 s.
            in_place = Structure(target.light_model, target.heavy_model, old.light_gpus, old.heavy_gpus)
            faster = self.planner.plan_within(in_place.pair, old.light_gpus, old.heavy_gpus, demand,
                                              self.settings.slo_s)
            if faster is not None and faster.capacity_qps > keep.capacity_qps:
                structure, why = self.priced(old, in_place, keep, demand)
                if structure != old:
                    return structure, f"{why}; the pair first, in place"
        return self.priced(old, target, keep, demand, ready=ready is not None)

    def behind(self, observation: Observation) -> bool:
        """Whether the current structure is behind the arrivals: its operating point was infeasible
        on the last tick and the queue holds BEHIND_SLO_SHARE of the SLO. Then the lowest recent
        estimate (DemandEnvelope), which lags a step of the level, does not hold it. A Markov level
        stepping from 15 to 45 jobs/s held sd35-large-turbo -> sd35-medium on 5 + 11 GPUs (42.7
        jobs/s at its fastest) for 25 s, each tick's lowest estimate just within it, and 93 jobs were
        shed (seed 407); one from 5 to 20 jobs/s, 0.8 % of the jobs (seed 203). On the tick alone,
        without the queue, trace_1_6qps's noise at a 60 s SLO moved 16 GPUs' models back and forth
        (FID 20.39 where the hold gives 20.29)."""
        return self.overloaded and self.queueing(observation) > BEHIND_SLO_SHARE * self.settings.slo_s

    def bursting(self) -> bool:
        return bursting(self.bursts, self.arriving, self.lead)

    def outrun(self, observation: Observation) -> bool:
        """Whether the arrivals are a burst that the current structure cannot ride out in its slack
        (Readiness.absorbs): then the structure is chosen for the arriving rate, as if it lasted.
        Chosen for the sustained demand, which takes a hold to follow, a step from 6 to 20 jobs/s
        after 90 s kept sd35-medium -> sd35-large for 7 s (each estimate of the last 2 s still
        served) and a 6 s window missed 24 % of its jobs."""
        current = observation.current
        if current is None or not self.bursting():
            return False
        old = Structure.of(current)
        return (old.runs_on(observation.gpus)
                and not self.readiness.absorbs(old, observation.gpus, self.arriving, self.lead,
                                               observation.queued_jobs))

    @property
    def confirm_s(self) -> float:
        """How long the estimates must agree before the structure changes (HADIS_PLAN_CONFIRM_S):
        by default a third of the hold (the held rate's part), 20 s at a 60 s SLO, 2 s at 6 s."""
        return self.envelope.confirm_s

    def priced(self, old: Structure, target: Structure, keep: PlanDecision, demand: float,
               ready: bool = False) -> tuple[Structure, str]:
        """Keep `old`, or take the first step towards `target`, as the switch's price says
        (shared/policies/transitions.py); the reason, for the plan. The target's quality is what a
        switch is for; its price is the step it takes now (stagger: a few GPUs dark for a few
        seconds), and each later step is priced in its turn. Priced as if every GPU moved at once,
        a structure far from its target was refused for a backlog that no step builds: on
        trace_1to20qps, 13 light GPUs held on for three minutes where the target wanted 1."""
        slo = self.settings.slo_s
        new = self.planner.plan_within(target.pair, target.light_gpus, target.heavy_gpus, demand, slo)
        assert new is not None
        kept = f"; kept {layout(old)}: "
        if keep.feasible and not ready and new.fid > keep.fid - self.settings.plan_min_gain_fid:
            # Quality alone, and too little of it to move GPUs for: the operating point adapts instead.
            return old, f"{kept}FID {new.fid:.4g} instead of {keep.fid:.4g} is not worth a switch"
        step = stagger(old, target, self.settings.plan_max_moving_gpus)
        cost, verdict = price_step(self, old, step, keep, demand)
        if not verdict.switch and step.pair != old.pair:
            # Split first, then the pair in place: from an emergency pair (sdxl-lightning, swapped in
            # place when a step outran the fleet), every pair-first path back to the better pair
            # passed through its pair on the old split, too slow for the demand, and the fleet stayed
            # for minutes at 1 FID worse; moved within the pair first, its GPUs keep up throughout.
            split = stagger(old, Structure(*old.pair, target.light_gpus, target.heavy_gpus),
                            self.settings.plan_max_moving_gpus)
            if (split != old and no_worse(self.planner, split, keep, demand, slo)
                    and (found := price_step(self, old, split, keep, demand))[1].switch):
                step, (cost, verdict) = split, found
        self.last_verdict = verdict
        if not verdict.switch:
            return old, f"{kept}{verdict.why}"
        self.continuing = self.heading == target
        self.proposed = (step, cost.seconds, target)  # the schedule may hold it (dwell) before it is in force
        then = "" if step == target else f"; step towards {target.light_gpus}/{target.heavy_gpus} GPUs"
        return step, (f"; switch: {cost.moving} GPUs loading for {cost.seconds:.3g} s "
                      f"({cost.new_workers} new workers), {verdict.why}{then}")


def no_worse(planner: Planner, step: Structure, keep: PlanDecision, demand: float, slo_s: float) -> bool:
    """Whether a step within the current pair serves `demand` at least as well as the structure it
    leaves (`keep`), or `keep` is behind anyway. A split-first step heads for another pair's split
    (HadisPolicy.priced); on a ramp near the boundary between two pairs the target's pair changed
    every few steps, and the split went back and forth with it at the current pair's cost
    (trace_1_6qps at 10x: sd35-large-turbo -> sd35-medium moved towards sd35-medium ->
    sd35-large's 13 + 3 and back, at FID 22-25; 21.26 without this rule, 20.97 with it)."""
    point = planner.plan_within(step.pair, step.light_gpus, step.heavy_gpus, demand, slo_s)
    return point is not None and (not keep.feasible or point.fid <= keep.fid)


def price_step(policy: HadisPolicy, old: Structure, step: Structure, keep: PlanDecision,
               demand: float) -> tuple[Transition, Verdict]:
    """What the step from `old` costs (transitions.transition) and whether it pays
    (transitions.worth_switching): the GPUs serving through it, its operating point after, and the
    arrivals it must serve through (a silence's, when the structure is chosen for bursts)."""
    settings, planner, slo = policy.settings, policy.planner, policy.settings.slo_s
    cost = transition(old, step, policy.profile, worker_start_s=settings.worker_start_s,
                      worker_start_each_s=settings.worker_start_each_s)
    serving = cost.serving
    during = planner.plan_within(serving.pair, serving.light_gpus, serving.heavy_gpus, demand, slo)
    after = planner.plan_within(step.pair, step.light_gpus, step.heavy_gpus, demand, slo)
    assert during is not None and after is not None
    verdict = worth_switching(keep_qps=keep.capacity_qps, new_qps=after.capacity_qps,
                              during_qps=during.capacity_qps, demand_qps=min(demand, policy.arriving),
                              switch_s=cost.seconds, horizon_s=settings.plan_horizon_s,
                              slack_s=slo - after.expected_latency_s)
    return cost, verdict


class DemandEnvelope:
    """The lowest and highest demand the structure was to be chosen for over the last confirm_s
    (the latest included). The structure moves to a better one only if it suits the highest, and
    away from the current one only if that fails even the lowest: a Schmitt trigger in time.
    Without it, at about 1 job/s and a 60 s SLO, the estimate's Poisson noise (amplified by the
    trend's lead) crossed a pair's boundary every few seconds, and each crossing after the dwell
    swapped all 16 GPUs' models and back (71 plans through the services on trace_1_6qps, 38 with
    it). A class of its own: its memory of estimates knows nothing of structures or of a switch
    under way, the policy's other state."""

    def __init__(self, confirm_s: float) -> None:
        self.confirm_s = confirm_s
        self.recent: deque[tuple[float, float]] = deque()  # (time, demand the structure was chosen for)

    def update(self, now: float, demand: float) -> tuple[float, float]:
        """Remember `demand` at `now`; the lowest and highest of the last confirm_s."""
        self.recent.append((now, demand))
        while self.recent and self.recent[0][0] < now - self.confirm_s:
            self.recent.popleft()
        values = [value for _, value in self.recent]
        return min(values), max(values)


def ready_for_bursts(readiness: Readiness, demand: float, gpus: int, ahead: float | None = None,
                     old: Structure | None = None, for_bursts: bool = False) -> tuple[Structure | None, str]:
    """The structure to hold instead of the planner's for `demand` when that one risks more than
    the budget (plan_risk) of the jobs over the remembered bursts (shared/policies/readiness.py),
    and why; None when the planner's is ready (or nothing is remembered yet). From `old`, the
    structure held, capacity is given back only as far as Readiness.trimmed allows; when it was held
    for the bursts (`for_bursts`: the last tick's answer was not None), to the planner's structure
    as to any other (Readiness.trims). Not otherwise: on a slow ramp (trace_1_6qps in real time) the
    trend's noise alternated the planner's structure between two pairs, each tick's trim a move at
    once, and the fleet flapped for four minutes (0.20 % missed, against none). A function of the
    readiness and its arguments (its planner, SLO and budget are the policy's): it reads none of
    the policy's switch state; `for_bursts` is handed in."""
    intervals = readiness.intervals(gpus)
    if not intervals or gpus <= 0:
        return None, ""
    ahead = demand if ahead is None else max(ahead, demand)
    planned = Structure.of(readiness.planner.plan(ahead, gpus, readiness.slo_s).plan_fields())
    first = readiness.risk(planned, gpus, intervals)
    if first <= readiness.budget and not (for_bursts and readiness.trims(old, planned, gpus)):
        return None, ""
    risk = (f"would miss {first:.1%} of them" if first > readiness.budget
            else f"gives back capacity that would not ride out bursts {readiness.stretch():.3g} x as long")
    ready = readiness.best(demand, gpus, intervals, ahead)
    if ready is None:
        return None, ""
    if old is not None and old.runs_on(gpus):
        ready = readiness.trimmed(old, ready, demand, gpus, ahead)  # capacity given back only for longer bursts
    return ready, f"; ready for the remembered bursts: {layout(ready)} (the structure for {ahead:.3g} qps {risk})"


def operating_point(readiness: Readiness, structure: Structure, observation: Observation, rate: float,
                    arriving: float, queueing_s: float, *, burst: bool) -> tuple[PlanDecision, dict[str, Any]]:
    """The structure's best point for `rate`, the queue's wait counted against the SLO, and its plan
    fields. In a burst (the structure held for the bursts, or the arrivals one) the point is chosen
    for what the slack cannot take (bursts.burst_rate), and, below the structure's best quality, the
    judge's escalations fill the heavy tier (bursts.fill_heavy). Filled at its best quality, a
    quiet minute's point went from d 0.6 to 1.0 and back every dwell."""
    planner, slo, gpus = readiness.planner, readiness.slo_s, observation.gpus
    if burst:
        rate = min(rate, burst_rate(observation.queued_jobs, arriving, readiness.capacity(structure, gpus), slo,
                                    burst_horizon(readiness.history, slo)))
    point = planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus, rate, slo,
                                queueing_s=queueing_s)
    assert point is not None  # the policy keeps only pairs of the table
    fields = point.plan_fields()
    best = readiness.point(structure, 0.0)  # the structure's best mix, capacity no object
    if not burst or best is None or point.fid <= best.fid:
        return point, fields  # a point at its best quality has no heavy GPUs to fill
    if (d := fill_heavy(point.d, point.r, arriving, *tier_throughputs(planner.profile, point), best.d)) > point.d:
        fields["d"] = d
        fields["reason"] += (f"; d {d:g} in the burst: its escalations fill the heavy tier (one it cannot"
                             f" finish in time is served its light image)")
    return point, fields


def burst_guard(now: float, point: PlanDecision, fields: dict[str, Any], profile: Profile) -> float:
    """The plan's burst guard (Plan.burst_qps): the routers hold its r against arrivals beyond it
    until a later tick sees the burst (engine.route). BURST_FACTOR x the arrivals its point was
    chosen for (`now`), or, when higher, the guard that a second's count trips just past the demand
    the point carries on its GPUs (fields' r and d; admission.carried_qps, pace_tripping_at): below
    that, the router's heavy jobs and the judge's escalations both fit in the heavy tier, and a burst
    is served as planned. At twice a silence's rate alone, every burst of on/off seed 703 (40-150
    jobs/s against an emergency pair on 5 + 11 GPUs that carries 129 at r 0.7) went light in its
    first seconds: 10-13 % heavy, where the fixed plan served 71-78 % without a miss (FID 26.06
    against 24.91). Guarded at the carried rate itself, a count trips PACE_SIGMAS deviations later:
    a silence's quality pair (8.4 jobs/s) let up to 17 jobs a second through by their scores, and
    bursty_off120 lost 0.04 FID."""
    guard = BURST_FACTOR * max(now, 1.0)
    carried = carried_qps(fields["r"], fields["d"], *tier_throughputs(profile, point))
    return round(max(guard, pace_tripping_at(carried)) if math.isfinite(carried) else guard, 2)


ABSORBED = "; kept for the bursts"


def bursting(history: BurstHistory, arriving: float, lead_s: float) -> bool:
    """Whether the arrivals are a burst: BURST_FACTOR x the lowest sustained demand of the last lead
    (a rise faster than a structure follows; a ramp's is slower)."""
    return arriving > BURST_FACTOR * max(history.lowest_since(lead_s), 1.0)


def absorbed(readiness: Readiness, old: Structure, demand: float, arriving: float, lead_s: float,
             gpus: int, queued: float = 0.0) -> str | None:
    """Why the structure held for the bursts stays although it cannot serve the sustained demand:
    its slack absorbs the arrivals so far and `lead_s` more at `arriving` (Readiness.absorbs), and its
    point for them is no worse than the planner's structure for the demand. None when it must change.
    Planned for a burst's rate as if it lasted, the fleet swapped to sdxl-lightning inside each burst
    of bursty_off120 (FID 29.8 for its jobs), where the held structure rode it out. Only in a burst
    (`bursting`): a ramp's structure must move in time."""
    if not bursting(readiness.history, arriving, lead_s) or not readiness.absorbs(old, gpus, arriving, lead_s, queued):
        return None
    planner, slo = readiness.planner, readiness.slo_s
    mine = planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, demand, slo)
    target = planner.plan(demand, gpus, slo)
    if mine is None or mine.fid > target.fid:
        return None
    return (f"{ABSORBED}: {layout(old)} absorbs the arrivals so far and {lead_s:g} s more at {arriving:.3g} qps in"
            f" its slack (FID {mine.fid:.4g}, the structure for {demand:.3g} qps {target.fid:.4g})")


def still_ready(readiness: Readiness, old: Structure, ready: Structure, demand: float, gpus: int,
                min_gain_fid: float, arriving: float, lead_s: float, queued: float = 0.0) -> str | None:
    """Why the current structure stays although `ready` is the best ready one, or None when it must
    change. A function of the readiness, as ready_for_bursts. It stays when it serves the demand and
    - the arrivals are a burst (at `arriving`) that it rides out for `lead_s` more
      (Readiness.absorbs), and `ready` has another split: GPUs moved in a burst are taken from it, and
      the readiness is for the next bursts (a pair swapped in place moves none). Compared at the
      estimate's level, which a burst has not yet moved, the first burst of an on/off trace (seed 301,
      at 30 jobs/s, the assumed burst's 100 jobs ending in it) moved 7 + 9 GPUs, which rode it out, to
      sd35-medium -> sd35-large, 16 GPUs loading, and 15 of its jobs missed; or
    - it is ready for the remembered bursts too, and `ready` is not `min_gain_fid` (plan_min_gain_fid)
      better over the remembered demand (Readiness.expected_fid, the measure `ready` was chosen by).
      Compared at the estimate's level alone, where the calm between bursts puts every split at its
      best point, the 7 + 9 GPUs held for the assumed burst were never given back to the heavy
      tier: 0.3-0.5 FID short of the best fixed plan on five of sixteen on/off traces."""
    if old == ready or not old.runs_on(gpus):
        return None
    planner, slo = readiness.planner, readiness.slo_s
    keep = planner.plan_within(old.pair, old.light_gpus, old.heavy_gpus, demand, slo)
    if keep is None or not keep.feasible:
        return None
    if (bursting(readiness.history, arriving, lead_s)
            and ready.split != old.split
            and readiness.absorbs(old, gpus, arriving, lead_s, queued)):
        return f"; kept {layout(old)}: it rides out this burst at {arriving:.3g} qps (a switch would take GPUs from it)"
    intervals = readiness.intervals(gpus)
    levels = readiness.levels(intervals)
    mine, theirs = readiness.expected_fid(old, gpus, levels), readiness.expected_fid(ready, gpus, levels)
    if theirs <= mine - min_gain_fid or readiness.risk(old, gpus, intervals) > readiness.budget:
        return None
    return (f"; kept {layout(old)}: ready for the remembered bursts too, FID {theirs:.4g} over them instead of "
            f"{mine:.4g} is not worth a switch")


def layout(structure: Structure) -> str:
    """A structure as every reason names it ("light xN -> heavy xM"), so that the plans' reasons
    read alike (and the tests match them)."""
    return f"{structure.light_model} x{structure.light_gpus} -> {structure.heavy_model} x{structure.heavy_gpus}"
