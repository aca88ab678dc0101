"""Ours: the `hadis` controller policy (docs/planner.md, "The controller")."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from shared.demand import queueing_delay_s
from shared.policies.bursts import BurstHistory, Capacity
from shared.policies.control import BATCH_SIZES, Observation, PlannerPolicy
from shared.policies.demand import PARTS, SustainedRate
from shared.policies.pareto import load_table
from shared.policies.planner import PlanDecision, Planner
from shared.policies.transitions import Structure, Transition, Verdict, stagger, transition, worth_switching
from shared.settings import Settings

# hadis's lead, in demand holds, when HADIS_PLAN_AHEAD_S is unset: one for the estimate's lag, one
# for a switch, and one because the services were measured to switch about 5 s after the simulator
# on the same ramp (process starts, the store's counter, the replayer).
AHEAD_HOLDS = 3
# The operating point follows the arrivals of the last third of the SLO once they are this many
# times the sustained demand: a burst, not the Poisson noise of a few seconds' count.
BURST_FACTOR = 2.0
PRIOR_HALFLIFE_SLOS = 10.0


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
        halflife = settings.burst_memory_s or 30 * settings.slo_s
        self.bursts = BurstHistory(reaction_s=self.lead, halflife_s=halflife, memory_s=3 * halflife)
        self.capacities: dict[tuple[Structure, int], Capacity] = {}
        self.ladders: dict[int, list[tuple[float, Structure]]] = {}
        self.risk_why = ""
        self.arriving = math.inf  # the arrivals a switch must serve through: until measured, all of its demand

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
        return queueing_delay_s(observation.queued_jobs, self.demand(observation), cap_s=self.settings.slo_s)

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

    def capacity(self, structure: Structure, gpus: int) -> Capacity:
        """A structure's fastest operating point: the most jobs/s its GPUs serve within the SLO, and
        its batches' seconds (what a burst meets once the operating point has degraded)."""
        key = (structure, gpus)
        if key not in self.capacities:
            fastest = self.planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus, math.inf,
                                               self.settings.slo_s)
            assert fastest is not None
            self.capacities[key] = Capacity(fastest.capacity_qps, fastest.expected_latency_s)
        return self.capacities[key]

    def ladder(self, gpus: int) -> list[tuple[float, Structure]]:
        """The distinct structures the planner chooses as the demand rises from nothing to the fleet's
        highest capacity, each with the least demand (on a grid of 1 % steps) that chooses it."""
        if gpus not in self.ladders:
            slo = self.settings.slo_s
            top = self.planner.plan(math.inf, gpus, slo).capacity_qps
            steps = max(int(math.log(max(top, 0.2) / 0.1) / math.log(1.01)), 1)
            rungs: list[tuple[float, Structure]] = []
            for index in range(steps + 1):
                value = 0.1 * 1.01 ** index
                structure = Structure.of(self.planner.plan(value, gpus, slo).plan_fields())
                if not rungs or rungs[-1][1] != structure:
                    rungs.append((value, structure))
            self.ladders[gpus] = rungs
        return self.ladders[gpus]

    def burst_demand(self, demand: float, gpus: int) -> float:
        """The lowest demand, `demand` or above, whose planned structure risks at most plan_risk of
        the jobs over the remembered bursts (shared/policies/bursts.py); the fleet's highest
        capacity when none does. The planner's ladder of structures is walked upwards (its capacity
        is not monotone in the demand: 6 + 10 GPUs may come before 5 + 11), skipping a structure
        no faster than one that failed."""
        self.risk_why = ""
        intervals = self.bursts.intervals()
        if not intervals or gpus <= 0:
            return demand
        prior = self.settings.burst_prior
        if prior > 0:
            # Before the history has seen a burst, one is assumed: a burst of `prior` x the fleet's
            # highest capacity for an SLO, at the start, fading with a half-life of 10 SLOs.
            weight = 0.5 ** (self.bursts.span_s / (PRIOR_HALFLIFE_SLOS * self.settings.slo_s))
            top = self.planner.plan(math.inf, gpus, self.settings.slo_s).capacity_qps
            intervals = [(self.settings.slo_s, prior * top, weight), *intervals]
        slo, budget = self.settings.slo_s, self.settings.plan_risk
        rungs = [(value, structure) for value, structure in self.ladder(gpus) if value > demand]
        base = Structure.of(self.planner.plan(demand, gpus, slo).plan_fields())
        candidates = [(demand, base)] + [rung for rung in rungs if rung[1] != base]

        first = self.bursts.risk(self.capacity(base, gpus), slo, intervals)
        if first <= budget:
            return demand
        failed: list[Capacity] = []
        for value, structure in candidates[1:]:
            capacity = self.capacity(structure, gpus)
            if any(capacity.qps <= worse.qps and capacity.latency_s >= worse.latency_s for worse in failed):
                continue  # no faster than one that failed: it fails too
            if self.bursts.risk(capacity, slo, intervals) <= budget:
                self.risk_why = (f"; structure for {value:.3g} qps: the remembered bursts would miss "
                                 f"{first:.1%} of jobs with the structure for {demand:.3g}")
                return value
            failed.append(capacity)
        return candidates[-1][0]

    def decide(self, observation: Observation) -> dict[str, Any]:
        demand, slo = self.demand(observation), self.settings.slo_s
        ahead = self.ahead(demand)
        # A level the demand has been at and left before: its rise is a burst of the kind remembered,
        # no ramp to extrapolate, and the replay alone says what the structure must absorb.
        seen = demand <= self.bursts.peak_before(self.lead)
        risky = self.burst_demand(0.0 if seen else demand, observation.gpus)
        if seen:
            ahead = max(risky, demand)
        self.continuing = False
        # The operating point changes for free: it follows the arrivals of the last third of the SLO
        # at once (a burst's first seconds), where the structure waits for the demand to last.
        recent = self.bursts.recent_rate(slo / PARTS)
        now = recent if recent > BURST_FACTOR * max(demand, 1.0) else demand
        self.arriving = max(now, demand)  # what a switch must serve through (priced)
        structure, why = self.structure(max(ahead, risky), observation)
        if self.risk_why and risky >= ahead:
            why = f"{self.risk_why}{why}"
        elif ahead > demand:
            why = f"; structure for {ahead:.3g} qps, the demand rising{why}"
        if seen:
            # Between bursts the next one comes without warning, and the jobs r and d send to the heavy
            # tier in its first second wait there behind the slow model: the operating point stays
            # ready for what the structure was chosen to absorb (the few jobs of a silence gain little).
            now = max(now, risky)
        point = self.planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus, now, slo,
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
        if not keep.feasible and target.pair != old.pair and target != Structure(*target.pair, *self.split(old)):
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
        return self.priced(old, target, keep, demand)

    @staticmethod
    def split(structure: Structure) -> tuple[int, int]:
        return structure.light_gpus, structure.heavy_gpus

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
        # A switch serves through what arrives now (a silence's, when the structure is chosen for bursts).
        verdict = worth_switching(keep_qps=keep.capacity_qps, new_qps=after.capacity_qps,
                                  during_qps=during.capacity_qps, demand_qps=min(demand, self.arriving),
                                  switch_s=cost.seconds,
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
