"""Burst risk: how much capacity the structure must hold for the demand it may meet before it can
react, learned online from the arrivals themselves.

The sustained estimate (shared/policies/demand.py) is built to ignore bursts, and on smooth ramps
that is right. Production traffic is often *made of* bursts: minutes of near silence, then 10-60x
the mean within seconds. Planned for the silence, the fleet holds its slowest, best models when
the next burst comes, and a structure takes the estimate's hold, a confirmation and a switch
(`reaction_s`, about 3 holds) to move; meanwhile the burst misses its deadlines.

What this module learns, per tick: the *surprise*, how far the arrival rate rose above the estimate
the controller held `reaction_s` earlier (never negative). On a ramp the surprise is the ramp's rise
over the reaction time, small; on bursty traffic it is the bursts themselves, since the estimate
that preceded them was the silence. What it computes, for a candidate structure: replay the
remembered surprises on top of today's estimate through a fluid queue with the structure's
highest capacity (its fastest operating point: the operating point degrades at once, only the
structure is slow) and the slack the SLO leaves after its batches; the jobs that would wait longer
than that slack are the misses it risks. Recent history counts more (a half-life), and the risk is
a share of *jobs*, not of time: a burst holds most of a bursty trace's jobs.

So a burst the queue's slack absorbs costs nothing and moves nothing; how large a burst a plan
absorbs is computed from the plan (capacity x (time + slack)), not assumed. The policy
(shared/policies/hadis.py) holds the best-quality structure whose risk is within its budget.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


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
    slack = max(slo_s - capacity.latency_s, 0.0)
    limit = capacity.qps * slack
    backlog = missed = jobs = 0.0
    for seconds, rate, weight in intervals:
        arrivals = rate * seconds
        backlog = max(backlog + arrivals - capacity.qps * seconds, 0.0)
        over = backlog - limit
        if over > 0:
            backlog = limit
            missed += weight * over
        jobs += weight * arrivals
    return missed, jobs


@dataclass
class BurstHistory:
    """The surprises of the last `memory_s` (a half-life of `halflife_s`) at the tick's grain."""

    reaction_s: float
    halflife_s: float
    memory_s: float
    # (time, seconds, arrival rate, estimate held then): one per observed interval
    samples: deque[tuple[float, float, float, float]] = field(default_factory=deque)
    last: tuple[float, int] | None = None

    def observe(self, now: float, arrivals: int, estimate: float) -> None:
        """Record the interval since the last call: its arrival rate, and the estimate now (which a
        later interval's surprise is measured against)."""
        if self.last is not None and arrivals < self.last[1]:
            self.samples.clear()  # a counter that went back: the controller restarted
            self.last = None
        if self.last is not None and now > self.last[0]:
            seconds = now - self.last[0]
            self.samples.append((now, seconds, (arrivals - self.last[1]) / seconds, estimate))
        elif self.last is None:
            self.samples.append((now, 0.0, 0.0, estimate))
        if self.last is None or now > self.last[0]:
            self.last = (now, arrivals)
        while self.samples and self.samples[0][0] < now - self.memory_s:
            self.samples.popleft()

    @property
    def span_s(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if len(self.samples) > 1 else 0.0

    def intervals(self) -> list[tuple[float, float, float]]:
        """(seconds, rate qps, weight) of every remembered interval, replayed from today's level:
        an interval's rate less however far the estimate has fallen since the one held
        `reaction_s` before it (the first interval's own before the history covers that). A falling
        ramp's past is thus its surprises on top of today's demand, while a burst out of a silence
        like today's is replayed whole."""
        if not self.samples:
            return []
        now, today = self.samples[-1][0], self.samples[-1][3]
        held = self.samples[min(1, len(self.samples) - 1)][3]  # the first interval's own, until one is old enough
        result = []
        earlier = iter(self.samples)
        pending = next(earlier, None)
        for time, seconds, rate, _ in self.samples:
            while pending is not None and pending[0] <= time - seconds - self.reaction_s:
                if pending[1] > 0:  # the first sample, with no interval, has no estimate yet
                    held = pending[3]
                pending = next(earlier, None)
            if seconds > 0:
                weight = math.pow(0.5, (now - time) / self.halflife_s)
                result.append((seconds, max(rate - max(held - today, 0.0), 0.0), weight))
        return result

    def recent_rate(self, span_s: float) -> float:
        """Arrivals per second over the last `span_s` (at least the last interval): what the
        operating point, which changes for free, follows at once."""
        seconds = arrivals = 0.0
        for _, interval_s, rate, _ in reversed(self.samples):
            if seconds >= span_s or interval_s <= 0:
                break
            seconds += interval_s
            arrivals += rate * interval_s
        return arrivals / seconds if seconds > 0 else 0.0

    def peak_before(self, span_s: float) -> float:
        """The highest estimate held more than `span_s` ago: a level the demand has been at before."""
        if not self.samples:
            return 0.0
        end = self.samples[-1][0] - span_s
        return max((estimate for time, _, _, estimate in self.samples if time <= end), default=0.0)

    def risk(self, capacity: Capacity, slo_s: float,
             intervals: list[tuple[float, float, float]] | None = None) -> float:
        """The share of the remembered jobs a structure of this capacity would miss (0 with no
        history)."""
        missed, jobs = replay_misses(self.intervals() if intervals is None else intervals, capacity, slo_s)
        return missed / jobs if jobs > 0 else 0.0
