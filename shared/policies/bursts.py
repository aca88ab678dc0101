"""Burst risk: how much capacity the structure must hold for the bursts it may meet before it can
react, learned online from the arrivals themselves.

The sustained estimate (shared/policies/sustained_demand.py) is built to ignore bursts, and on smooth ramps
that is right. Production traffic is often *made of* bursts: minutes of near silence, then 10-60x
the mean within seconds. Planned for the silence, the fleet holds its slowest, best models when the
next burst comes, and a structure takes the estimate's hold, a confirmation and a switch (about
three holds) to move; meanwhile the burst misses its deadlines.

What this module keeps: every tick's interval and its arrival rate (`BurstHistory`), recent ones
weighing more (a half-life). What it computes for a structure: replay the remembered arrivals
through a fluid queue served at the structure's highest capacity (its fastest operating point: the
operating point degrades at once, only the structure is slow); a job misses when the backlog ahead
of it is more than that capacity clears in the SLO's slack (the SLO less the batches), and is shed.
The risk is the share of *jobs* it would miss, not of time: a burst holds most of a bursty
trace's jobs.

So a burst the queue's slack absorbs costs nothing and moves nothing; how large a burst a plan
absorbs is computed from the plan (capacity x (burst length + slack)), not assumed. The choice of
structure is shared/policies/readiness.py's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from shared.arrival_rate import beyond_poisson

# The share of the SLO's slack a burst's backlog may fill: the operating point degrades on the next
# tick and the jobs routed to the heavy tier before it wait behind the slow model, so a burst that
# just fits the fluid queue's slack still sheds jobs in the simulator.
SLACK_USABLE = 0.75


# A burst's operating point is chosen for the backlog and this many SLOs of arrivals at the burst's
# rate, the slack absorbing the rest: the point is chosen again every tick, so a burst that lasts
# moves it to faster points as the backlog grows, and one that ends has cost less quality than the
# fastest point would (which the rate alone picks: the burst's rate exceeds most points' capacity).
BURST_HORIZON_SLOS = 0.5
# ... or for the remembered bursts' mean length (`burst_horizon`) when longer, up to this many SLOs:
# a Markov level's step out of a lull lasts its holding time, not an on/off burst's few seconds.
HORIZON_MAX_SLOS = 2.0


# How far a burst's escalations overfill the heavy tier (bursts.fill_heavy), as a multiple of what
# its GPUs process: escalations arrive unevenly and a heavy batch starts full only from a queue, and
# what the tier cannot take in time costs nothing but the light image. Bounded, because the heavy
# tier then serves a FIFO share of the escalated, no longer the worst-judged alone: at 2 it serves
# about half of the worst 2 d. (The reports' FID reads only the realised shares, not which prompts
# went heavy, so it cannot see that loss: there 1 / 1.5 / 2 / 3 / unbounded gave bursty_p30
# 23.08 / 23.06 / 23.06 / 22.95 / 22.69.)
HEAVY_OVERFILL = 2.0
# A filled escalation share is rounded up to this step, so that a burst's changing rate does not
# publish a new plan every tick.
FILL_STEP = 0.05


# An interval's arrivals within this many Poisson deviations of the sustained estimate are its
# noise, not a burst (`BurstHistory.intervals`); a level the estimate left by more than this many
# deviations of its own noise is a level left (`BurstHistory.left_level`).
NOISE_SIGMAS = 3.0
LEVEL_SIGMAS = 2.0
# A burst lasts while the arrivals are beyond this many times the estimate it rose from, by more than
# their noise (`BurstHistory.run_seconds`).
RUN_FACTOR = 2.0


@dataclass(frozen=True)
class Capacity:
    """What a structure can do at its fastest: jobs/s, and the seconds its batches take (a job's
    queueing slack is the SLO less that)."""

    qps: float
    latency_s: float


def replay_misses(intervals: list[tuple[float, float, float]], capacity: Capacity,
                  slo_s: float) -> tuple[float, float]:
    """(weighted misses, weighted jobs) of a fluid queue fed each interval's rate and served at
    `capacity.qps`. `intervals` holds (seconds, rate qps, weight). A job
    misses when the backlog ahead of it is more than the capacity clears in the SLO's slack; such
    jobs are shed (they take no capacity), as the workers shed a job that cannot end in time."""
    missed, jobs, _ = replay(intervals, capacity, slo_s)
    return missed, jobs


def replay(intervals: list[tuple[float, float, float]], capacity: Capacity, slo_s: float,
           backlog: float = 0.0) -> tuple[float, float, float]:
    """replay_misses from a queue already `backlog` jobs long, with the backlog it leaves: a
    replay continued with more intervals where it ended (Readiness.absorbs)."""
    slack = max(slo_s - capacity.latency_s, 0.0)
    limit = capacity.qps * slack * SLACK_USABLE
    missed = jobs = 0.0
    for seconds, rate, weight in intervals:
        arrivals = rate * seconds
        backlog = max(backlog + arrivals - capacity.qps * seconds, 0.0)
        over = backlog - limit
        if over > 0:
            backlog = limit
            missed += weight * over
        jobs += weight * arrivals
    return missed, jobs, backlog


@dataclass
class BurstHistory:
    """The arrivals of the last `memory_s` (a half-life of `halflife_s`) at the tick's grain."""

    halflife_s: float
    memory_s: float
    # (time, seconds, arrival rate, the sustained estimate then, whether its arrivals are beyond that
    # estimate's noise (NOISE_SIGMAS): decided once, `intervals` and `bursts_seen` read it every tick)
    samples: deque[tuple[float, float, float, float, bool]] = field(default_factory=deque)
    last: tuple[float, int] | None = None
    first_arrivals: int | None = None  # the counter at the first observation: jobs_seen counts from it

    def observe(self, now: float, arrivals: int, estimate: float) -> None:
        """Record the interval since the last call: its arrival rate, and the sustained estimate now
        (`left_level` reads it)."""
        if self.last is not None and arrivals < self.last[1]:
            self.samples.clear()  # a counter that went back: the controller restarted
            self.last = self.first_arrivals = None
        if self.first_arrivals is None:
            self.first_arrivals = arrivals
        if self.last is not None and now > self.last[0]:
            seconds = now - self.last[0]
            rate = (arrivals - self.last[1]) / seconds
            burst = beyond_poisson(rate * seconds, estimate * seconds, NOISE_SIGMAS)
            self.samples.append((now, seconds, rate, estimate, burst))
        elif self.last is None:
            self.samples.append((now, 0.0, 0.0, estimate, False))
        if self.last is None or now > self.last[0]:
            self.last = (now, arrivals)
        while self.samples and self.samples[0][0] < now - self.memory_s:
            self.samples.popleft()

    @property
    def jobs_seen(self) -> int:
        """Jobs arrived since the first observation (all of them, not only the remembered ones)."""
        return 0 if self.last is None or self.first_arrivals is None else self.last[1] - self.first_arrivals

    def intervals(self, stretch: float = 1.0) -> list[tuple[float, float, float]]:
        """(seconds, rate qps, weight) of every remembered interval: as it came when its arrivals
        are beyond the sustained estimate's Poisson noise (NOISE_SIGMAS), its seconds times
        `stretch` (a burst as long again as those seen: Readiness.trimmed), else at most the estimate.
        A burst is what the estimate does not hold; the one-second counts of a steady demand are
        not. Replayed as they came, the counts of a slow ramp at one job a second (trace_1_6qps)
        read as bursts that sd35-medium -> sd35-large, whose batches leave little slack, would
        miss, and the readiness held structures chosen for those counts in place of the ramp's
        own. (Replaying it from today's level instead, less however far the estimate had fallen
        since, changed nothing on the ramps and nothing on the bursty traces.)"""
        if not self.samples:
            return []
        now = self.samples[-1][0]
        intervals = []
        for time, seconds, rate, estimate, burst in self.samples:
            if seconds > 0:
                weight = self.weight(now, time)
                intervals.append((seconds * stretch, rate, weight) if burst else (seconds, min(rate, estimate), weight))
        return intervals

    def weight(self, now: float, time: float) -> float:
        """What an interval ended at `time` weighs at `now`: halved every halflife_s."""
        return math.pow(0.5, (now - time) / self.halflife_s)

    def bursts_seen(self) -> int:
        """How many bursts are remembered: runs of intervals beyond the sustained estimate's noise
        (the intervals `intervals` replays as they came)."""
        count, inside = 0, False
        for _, seconds, _, _, burst in self.samples:
            if seconds <= 0:
                continue
            count += burst and not inside
            inside = burst
        return count

    def run_seconds(self) -> float:
        """The remembered bursts' mean length (s, weighted as `intervals`), the one under way left
        out; 0 with none ended. A burst starts at an interval beyond the sustained estimate's noise
        and lasts while the arrivals stay beyond RUN_FACTOR x the estimate it rose from (at least
        one job a second), by more than their noise, after the estimate has caught up with them
        too: the runs beyond the estimate alone (`bursts_seen`) end as it catches up, 3-4 s into a
        Markov level of 50 s as into an on/off burst of 4 s."""
        if not self.samples:
            return 0.0
        now = self.samples[-1][0]
        total = weights = run = 0.0
        floor: float | None = None
        for time, seconds, rate, estimate, burst in self.samples:
            if seconds <= 0:
                continue
            if floor is None and burst:
                floor = max(estimate, 1.0)
            if floor is not None and beyond_poisson(rate * seconds, RUN_FACTOR * floor * seconds, NOISE_SIGMAS):
                run += seconds
                continue
            if run > 0:
                weight = self.weight(now, time)
                total, weights = total + weight * run, weights + weight
            run, floor = 0.0, None
        return total / weights if weights > 0 else 0.0

    def recent_rate(self, span_s: float) -> float:
        """Arrivals per second over the last `span_s` (at least the last interval): what the
        operating point, which changes for free, follows at once."""
        seconds = arrivals = 0.0
        for _, interval_s, rate, _, _ in reversed(self.samples):
            if seconds >= span_s or interval_s <= 0:
                break
            seconds += interval_s
            arrivals += rate * interval_s
        return arrivals / seconds if seconds > 0 else 0.0

    def lowest_since(self, span_s: float) -> float:
        """The lowest sustained estimate of the last `span_s` (the oldest remembered if the memory is
        shorter): the level a burst rises from, even one that comes before the estimate has fallen
        back from the last burst."""
        if not self.samples:
            return 0.0
        start = self.samples[-1][0] - span_s
        lowest = math.inf
        for time, _, _, estimate, _ in reversed(self.samples):
            lowest = min(lowest, estimate)
            if time <= start:
                break
        return lowest

    def left_level(self, span_s: float, part_s: float) -> float:
        """The highest estimate held more than `span_s` ago that the estimate has since fallen from
        by more than LEVEL_SIGMAS deviations of its noise (a rate counted over `part_s` seconds, the
        estimate's grain); 0 when none. A level the demand has been at and left: returning to it is
        no ramp. A slow ramp's estimate dips by its noise and returns every few minutes; read as
        levels left, trace_1_6qps's rise was never extrapolated and sd35-medium -> sd35-large was
        chosen for the dips and missed 1-2 % of the jobs at the top."""
        end = self.samples[-1][0] - span_s if self.samples else 0.0
        peak = level = 0.0
        lowest = math.inf
        for time, _, _, estimate, _ in self.samples:
            if time <= end and estimate > peak:
                peak, lowest = estimate, math.inf
            elif peak > 0:
                lowest = min(lowest, estimate)
                if peak - lowest > LEVEL_SIGMAS * math.sqrt(peak * part_s) / part_s:
                    level = max(level, peak)
        return level

    def risk(self, capacity: Capacity, slo_s: float,
             intervals: list[tuple[float, float, float]] | None = None) -> float:
        """The share of the remembered jobs a structure of this capacity would miss (0 with no
        history)."""
        missed, jobs = replay_misses(self.intervals() if intervals is None else intervals, capacity, slo_s)
        return missed / jobs if jobs > 0 else 0.0


def burst_horizon(history: BurstHistory, slo_s: float) -> float:
    """The seconds of a burst's arrivals its operating point is chosen for (burst_rate): the
    remembered bursts' mean length (BurstHistory.run_seconds), at least BURST_HORIZON_SLOS and at
    most HORIZON_MAX_SLOS x SLO. At half an SLO alone, each step of a Markov level from 0.5 to 20
    jobs/s kept sd35-large-turbo -> sd35-medium on 1 + 15 GPUs at r 0.8 for ten seconds while
    the queue grew to 45 jobs, and 0.93 % of the trace's jobs expired (seed 702, where the fixed plan
    missed none); on on/off bursts of a few seconds it is the same horizon as before."""
    return min(max(BURST_HORIZON_SLOS * slo_s, history.run_seconds()), HORIZON_MAX_SLOS * slo_s)


def burst_rate(queued: int, arriving: float, capacity: Capacity, slo_s: float, horizon_s: float | None = None) -> float:
    """The rate a burst's operating point is chosen for: the least capacity that serves the queued
    jobs and `horizon_s` of arrivals at `arriving` (burst_horizon; BURST_HORIZON_SLOS x SLO when
    None) within the usable slack of a structure of `capacity` (its batches' seconds less the SLO)."""
    horizon = BURST_HORIZON_SLOS * slo_s if horizon_s is None else horizon_s
    slack = max(slo_s - capacity.latency_s, 0.0) * SLACK_USABLE
    return (max(queued, 0) + arriving * horizon) / (horizon + slack)


def fill_heavy(d: float, r: float, arriving: float, light_qps: float, heavy_qps: float, ceiling: float = 1.0) -> float:
    """The judge's escalation share in a burst: at least HEAVY_OVERFILL x what the heavy tier's GPUs
    (`heavy_qps`, jobs/s) process beside the router's share r, over the light images judged (the
    arrivals, at most what the light tier's GPUs process). A burst's point is sized for a rate the
    heavy tier cannot keep up with at the point's own d, so the heavy GPUs idled while the light
    tier served the burst; an escalation the heavy tier cannot finish by its deadline is served its
    light image (shared/policies/engine.py: fallback), so filling it costs no deadline. A fixed
    plan at d 0.2 served bursty_off120's bursts 0.5 FID better than the point sized for them at d 0.1.
    At most `ceiling` (the d of the structure's best point: more escalations than the best mix is
    no better quality)."""
    judged = min(arriving * (1.0 - r), light_qps)
    spare = heavy_qps - r * arriving
    if judged <= 0 or spare <= 0:
        return d
    filled = math.ceil(HEAVY_OVERFILL * spare / judged / FILL_STEP - 1e-9) * FILL_STEP
    return max(d, min(round(filled, 2), ceiling, 1.0))
