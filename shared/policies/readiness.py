"""Risk-priced structures: of every structure the fleet can take (a model pair and GPUs per tier),
the one with the best quality at today's demand whose risk over the remembered bursts is within the
budget (shared/policies/bursts.py has the history and the replay; the hadis policy,
shared/policies/hadis.py, asks this module only when the structure the planner would choose for
the sustained demand is not ready).

Why search every split of the planner's pairs and not the planner's choice for a higher demand:
the planner picks the best quality *at* a demand, so the structure it picks for a burst's rate
serves the silence between bursts with the burst's models. A structure is judged here on two
separate things: its quality at the demand that arrives now (its best operating point,
`Planner.plan_within`) and what a burst meets (its fastest operating point). A fast light tier
beside many heavy GPUs can be both.
"""

from __future__ import annotations

import math
from collections import deque

from shared.policies.bursts import BurstHistory, Capacity, replay
from shared.policies.planner import PlanDecision, Planner
from shared.policies.transitions import Structure

# GPU splits searched per pair: every split up to this many GPUs, this many evenly spaced above.
SPLITS = 32
# Today's demand is rounded to steps of this factor, so that a steady demand finds its quality cached.
DEMAND_STEP = 1.025
# The burst assumed before any is seen (`burst_prior`) is replayed for the first this many jobs.
PRIOR_JOBS = 100
# A structure held for the bursts gives capacity back to quality only for one that rides out the
# remembered bursts this many times as long (`trimmed`).
TRIM_STRETCH = 2.0
# ... and more while few bursts are remembered (`stretch`).
TRIM_DOUBT = 0.5


class Readiness:
    def __init__(self, planner: Planner, slo_s: float, budget: float, prior: float, history: BurstHistory) -> None:
        self.planner = planner
        self.slo_s = slo_s
        self.budget = budget
        self.prior = prior
        self.history = history
        self.capacities: dict[tuple[Structure, int], Capacity] = {}
        self.points: dict[tuple[Structure, float], PlanDecision | None] = {}
        self.layouts: dict[int, list[Structure]] = {}
        # The intervals of the last tick and fleet asked, by stretch (a trim asks both each tick).
        self.replayed: tuple[tuple, dict[float, list[tuple[float, float, float]]]] = ((), {})
        self.leveled: tuple[list[tuple[float, float, float]], dict[float, float]] | None = None
        self.absorbed: tuple[tuple, bool] | None = None  # the last absorbs() asked, and its answer
        self.counted: tuple[tuple[float, int] | None, int] = (None, 0)  # the tick's bursts remembered (`stretch`)

    def intervals(self, gpus: int, stretch: float = 1.0) -> list[tuple[float, float, float]]:
        """The remembered intervals, after the assumed burst while the history is young: a burst of
        `prior` x the fleet's highest capacity for one SLO, replayed until PRIOR_JOBS jobs have
        arrived. Why a number of jobs, and no more: the silence before a first burst brings few jobs
        and keeps the fleet ready for it (bursty_p30's first burst comes in its first second,
        bursty_off120's after 5 jobs), where a slow ramp's first jobs pay for the ready structure
        (sd35-large-turbo -> sd35-medium at FID 20.5 where sd35-medium -> sd35-large serves them at
        19.4). It used to fade, halving every 100 jobs; at a risk budget of 0.5 % of the jobs even
        a weight of 2^-6 kept it binding, so it held for about 700 jobs: trace_1to20qps's first
        100 s and trace_1_6qps's first 21 minutes, 0.15 and 0.25 FID on those traces. The bursts
        seen `stretch` times as long when asked (`trimmed`)."""
        key = (self.history.last, gpus)
        if self.replayed[0] != key:
            self.replayed = (key, {})
        if stretch in self.replayed[1]:
            return self.replayed[1][stretch]  # asked twice a tick (the choice, then whether the current one is ready)
        intervals = self.history.intervals(stretch)
        if self.prior > 0 and gpus > 0 and self.history.jobs_seen < PRIOR_JOBS:
            top = self.planner.plan(math.inf, gpus, self.slo_s).capacity_qps
            intervals = [(self.slo_s, self.prior * top, 1.0), *intervals]
        self.replayed[1][stretch] = intervals
        return intervals

    def capacity(self, structure: Structure, gpus: int) -> Capacity:
        """A structure's fastest operating point: the most jobs/s its GPUs serve within the SLO, and
        its batches' seconds (what a burst meets once the operating point has degraded)."""
        key = (structure, gpus)
        if key not in self.capacities:
            fastest = self.planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus, math.inf,
                                               self.slo_s)
            self.capacities[key] = (Capacity(0.0, math.inf) if fastest is None
                                    else Capacity(fastest.capacity_qps, fastest.expected_latency_s))
        return self.capacities[key]

    def risk(self, structure: Structure, gpus: int, intervals: list[tuple[float, float, float]]) -> float:
        return self.history.risk(self.capacity(structure, gpus), self.slo_s, intervals)

    def absorbs(self, structure: Structure, gpus: int, rate: float, seconds: float, queued: float = 0.0) -> bool:
        """Whether the structure's fastest operating point, its queue's slack included, serves the
        remembered arrivals and `seconds` more at `rate` within the budget and with no miss in those
        seconds: a burst it rides out is no reason to change it. The seconds more start from the
        replay's backlog or the `queued` jobs, whichever is longer: the replay's fluid queue runs at
        the fastest point's capacity, which the fleet reaches late and serves less evenly. From the
        replay's backlog alone, an MMPP step from 10 to 40 jobs/s read as absorbed by 3 + 13 GPUs
        while the queue grew from 77 to 142 jobs and 157 jobs were shed (seed 711)."""
        key = (self.history.last, structure, gpus, rate, seconds, queued)
        if self.absorbed is not None and self.absorbed[0] == key:
            return self.absorbed[1]  # asked twice a tick (HadisPolicy.outrun, then hadis.absorbed)
        intervals = self.intervals(gpus)
        answer = False
        if intervals:
            capacity = self.capacity(structure, gpus)
            missed, jobs, backlog = replay(intervals, capacity, self.slo_s)
            more_missed, more_jobs, _ = replay([(seconds, rate, 1.0)], capacity, self.slo_s, max(backlog, queued))
            answer = more_missed == 0 and missed <= self.budget * (jobs + more_jobs)
        self.absorbed = (key, answer)
        return answer

    def point(self, structure: Structure, demand: float) -> PlanDecision | None:
        """The structure's best operating point at `demand` (rounded to DEMAND_STEP), cached."""
        rounded = self.rounded(demand)
        key = (structure, rounded)
        if key not in self.points:
            self.points[key] = self.planner.plan_within(structure.pair, structure.light_gpus, structure.heavy_gpus,
                                                        rounded, self.slo_s)
        return self.points[key]

    def serves(self, structure: Structure, rate: float) -> bool:
        """Whether the structure has a feasible operating point for `rate` (rounded as `point`)."""
        point = self.point(structure, rate)
        return point is not None and point.feasible

    def layouts_for(self, gpus: int) -> list[Structure]:
        """Every pair the planner chooses at some demand (`frontier`) on every split of `gpus` (every
        split up to SPLITS GPUs, SPLITS + 1 evenly spaced ones above). Only those pairs: with every
        pair of the table, the assumed burst's replay chose sdxl-lightning -> sd35-large (r 0.9 at a
        few jobs/s, the fast light model for the burst), whose points at the ramp's later demand
        were FID 22-25 (trace_1_6qps at 10x: 21.26 against 20.97)."""
        if gpus not in self.layouts:
            splits = sorted({round(gpus * index / SPLITS) for index in range(SPLITS + 1)} if gpus > SPLITS
                            else set(range(gpus + 1)))
            pairs = self.frontier(gpus)
            self.layouts[gpus] = [Structure(light, heavy, split, gpus - split)
                                  for light, heavy in pairs for split in splits]
        return self.layouts[gpus]

    def frontier(self, gpus: int) -> list[tuple[str, str]]:
        """The pairs the planner chooses at some demand for `gpus` GPUs (on a grid of DEMAND_STEP up
        to the fleet's highest capacity): three of the six of paper-l40s-x10's table."""
        top = self.planner.plan(math.inf, gpus, self.slo_s).capacity_qps
        pairs, rate = set(), 0.05
        while rate <= top * DEMAND_STEP:
            pairs.add(Structure.of(self.planner.plan(rate, gpus, self.slo_s).plan_fields()).pair)
            rate *= DEMAND_STEP
        return sorted(pairs)

    def rounded(self, rate: float) -> float:
        return DEMAND_STEP ** round(math.log(max(rate, 0.05)) / math.log(DEMAND_STEP))

    def levels(self, intervals: list[tuple[float, float, float]]) -> dict[float, float]:
        """The remembered jobs by the (rounded) rate they are served at: the demand distribution a
        structure's quality is judged over (a burst's jobs are most of a bursty trace's). A job is
        served at the arrival rate of the SLO up to it, not of its own second: the queue's slack
        spreads a burst of a few seconds over the SLO, and the operating point follows the backlog
        (bursts.burst_rate). Judged at each second's rate, a 2.5 s burst at 112 jobs/s met every
        pair at its fastest point, sd35-large-turbo -> sd35-medium was no better than the emergency
        sdxl-lightning -> sd35-large-turbo (24.98 against 24.97), and the fleet held the emergency
        pair for four minutes of calm (on/off seed 510: FID 25.18 where the best fixed plan,
        sd35-large-turbo -> sd35-medium on 8 + 8, served every burst in time at 24.06). The
        intervals' own list (`intervals` keeps one per tick) is leveled once: the choice and the
        held structure's comparison ask for the same."""
        if self.leveled is not None and self.leveled[0] is intervals:
            return self.leveled[1]
        jobs: dict[float, float] = {}
        window: deque[tuple[float, float]] = deque()  # (seconds, arrivals) of the last SLO
        seconds_in = arrivals_in = 0.0
        for seconds, rate, weight in intervals:
            window.append((seconds, rate * seconds))
            seconds_in, arrivals_in = seconds_in + seconds, arrivals_in + rate * seconds
            while len(window) > 1 and seconds_in - window[0][0] >= self.slo_s:
                oldest_s, oldest_n = window.popleft()
                seconds_in, arrivals_in = seconds_in - oldest_s, arrivals_in - oldest_n
            if rate > 0:
                level = self.rounded(arrivals_in / seconds_in if seconds_in > 0 else rate)
                jobs[level] = jobs.get(level, 0.0) + rate * seconds * weight
        self.leveled = (intervals, jobs)
        return jobs

    def expected_fid(self, structure: Structure, gpus: int, levels: dict[float, float]) -> float:
        """The job-weighted FID of the structure's operating points over the remembered demand (at a
        rate it cannot serve, its fastest point's: the operating point degrades there)."""
        total = weighted = 0.0
        for level, jobs in levels.items():
            point = self.point(structure, level)
            if point is None:
                return math.inf
            weighted += jobs * point.fid
            total += jobs
        return weighted / total if total > 0 else math.inf

    def best(self, demand: float, gpus: int, intervals: list[tuple[float, float, float]],
             ahead: float | None = None, pair: tuple[str, str] | None = None) -> Structure | None:
        """Of the structures with a point for `demand`, the one with the best expected quality over the
        remembered demand whose risk is within the budget (ties: more capacity); the fastest
        structure when none is; None with no GPUs. A structure no faster than one that failed is
        not replayed: it fails too. While the demand rises (`ahead`, the demand the planner's
        structure is chosen for, above `demand`), only structures that serve `ahead` too, when any
        does: the remembered demand is behind a ramp, and a structure chosen for it alone was
        overloaded a minute later (trace_1_6qps). Only splits of `pair` when given (`trimmed`)."""
        if gpus <= 0:
            return None
        levels = self.levels(intervals)
        layouts = [structure for structure in self.layouts_for(gpus) if pair is None or structure.pair == pair]
        options = []
        for structure in layouts:
            # Whether it keeps up is the replay's to say (the recent intervals are in it): planned
            # for a burst's rate as if it lasted, only the fastest pair would do.
            if self.point(structure, demand) is not None:
                options.append((self.expected_fid(structure, gpus, levels), -self.capacity(structure, gpus).qps,
                                structure))
        if ahead is not None and ahead > demand:
            options = [option for option in options if self.serves(option[2], ahead)] or options
        options.sort(key=lambda option: (option[0], option[1]))
        failed: list[Capacity] = []
        for _, _, structure in options:
            capacity = self.capacity(structure, gpus)
            if any(capacity.qps <= worse.qps and capacity.latency_s >= worse.latency_s for worse in failed):
                continue
            if self.history.risk(capacity, self.slo_s, intervals) <= self.budget:
                return structure
            failed.append(capacity)
        return max(layouts, key=lambda structure: self.capacity(structure, gpus).qps, default=None)

    def stretch(self) -> float:
        """How many times as long a trim replays the remembered bursts: TRIM_STRETCH, and more while
        few are remembered (x 1 + TRIM_DOUBT / their number: 3 after one burst, 2.5 after two). An
        on/off trace's first burst said little of its next: 123 jobs in 2 s, then 358 in 4 s (seed
        602), and 27 jobs in one second, then 45 (seed 610); trimmed at a stretch of 2 after them,
        each missed 1.5-1.6 % of its jobs. (1 + 1 / their number did the same on those two and
        cost 0.01 FID more over 60 traces.) Counted once a tick."""
        if self.counted[0] != self.history.last:
            self.counted = (self.history.last, self.history.bursts_seen())
        return TRIM_STRETCH * (1 + TRIM_DOUBT / max(self.counted[1], 1))

    def trims(self, old: Structure | None, structure: Structure, gpus: int) -> bool:
        """Whether `structure` gives back capacity that `old` holds without riding out the remembered
        bursts `stretch` times as long: a trim, whoever proposes it. Priced for the readiness's own
        choice alone, the planner's structure for the calm took the fleet from the assumed burst's
        7 + 9 GPUs to sd35-medium -> sd35-large on 6 + 10 once the bursts seen (27-33 jobs in a
        second) fitted it, and the next, 45 jobs in a second, shed 20 (seed 610)."""
        if old is None or not old.runs_on(gpus) or self.capacity(structure, gpus).qps >= self.capacity(old, gpus).qps:
            return False
        return self.risk(structure, gpus, self.intervals(gpus, self.stretch())) > self.budget

    def trimmed(self, old: Structure, ready: Structure, demand: float, gpus: int,
                ahead: float | None = None) -> Structure:
        """What to head for from `old`, the structure held, when `ready` is the best for the
        remembered bursts: `ready` when it has no less capacity (a step towards faster capacity is
        taken at once); when it has less (a trim, capacity given back to quality), the best split
        of `ready`'s pair for the remembered bursts `stretch` times as long (its fastest split
        when none rides them out), or `old` when that is a split of its own pair and no slower.
        A handful of bursts tells little of the next one's length (an on/off trace's on periods are
        exponential: one in ten is 2.3 times the mean): trimmed to the bursts seen, the fleet held
        1 + 15 GPUs after the first burst of an on/off trace (seed 303) and the next, longer one
        missed 8 % of the trace's jobs. Held at the assumed burst's 7 + 9 instead, the calm's
        quality was 0.3-0.5 FID short of the best fixed plan's on five of sixteen traces. Searched
        over every pair, the longer bursts kept the emergency sdxl-lightning pair for minutes after
        a burst that sd35-large-turbo -> sd35-medium on 8 + 8 serves in time (on/off seed 510)."""
        if self.capacity(ready, gpus).qps >= self.capacity(old, gpus).qps:
            return ready
        safer = self.best(demand, gpus, self.intervals(gpus, self.stretch()), ahead, pair=ready.pair)
        if safer is None or (safer.pair == old.pair and self.capacity(safer, gpus).qps >= self.capacity(old, gpus).qps):
            return old
        return safer
