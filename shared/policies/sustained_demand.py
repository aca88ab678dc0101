"""Demand that a burst cannot fool: the arrival rate the controller plans its models and GPUs for.

A backlog that arrives at once (a client catching up, a redelivery wave, a 2-second spike) is queue
depth, not demand: a model swap takes longer than it lasts, so changing the model pair for it only
loses capacity while the queue drains anyway. A rise that lasts is demand, and must be seen soon.

The estimate is the higher of two robust rates over the (time, arrivals so far) samples the
controller takes every tick:

- the *trimmed* rate over the last `window_s`: the per-interval rates with the busiest `hold_s / 3`
  seconds of intervals left out (a burst up to that long is dropped whole), averaged over the rest;
  it follows slow changes and is steady at low rates, where counts per second are noisy;
- the *held* rate: the last `hold_s` cut into three equal parts, the lowest of their three rates. A
  burst no longer than a part leaves at least one part untouched, so it is ignored; a rise that has
  lasted `hold_s` shows in all three parts and is seen whole, within `hold_s`.

With the defaults (hold 9 s, window 30 s) a 10x burst of up to 3 s does not move the estimate; a
step up is seen in full after 9 s; a step down is followed over the window (capacity is released
slowly, which costs quality for a while, not deadlines).

The *trend* (`trend`) is how fast that demand rises: the held rate now less the held rate two
holds ago, over two holds, never negative. The hadis policy chooses its model pair and tier sizes
for the demand plus the trend times a lead (shared/policies/hadis.py: HadisPolicy.ahead), since a
new structure serves only after the estimate's lag and a switch. Made of held rates, the trend
ignores a burst as they do.

The backlog itself enters the plan as queueing delay, by Little's law (shared/arrival_rate.py:
queueing_delay_s): the wait of a new job behind the queued ones at the sustained rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

PARTS = 3  # the held rate's parts: a burst shorter than hold_s / PARTS leaves one untouched
TREND_HOLDS = 2  # the trend's span, in holds


@dataclass
class SustainedRate:
    hold_s: float = 9.0
    window_s: float = 30.0
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (time, arrivals so far)

    def __post_init__(self) -> None:
        if self.hold_s <= 0 or self.window_s < self.hold_s:
            raise ValueError("need 0 < hold_s <= window_s")

    def observe(self, now: float, arrivals: int) -> float:
        """Add a sample (a counter that went back restarts the history) and return the estimate."""
        if self.samples and (now <= self.samples[-1][0] or arrivals < self.samples[-1][1]):
            if arrivals < self.samples[-1][1]:
                self.samples.clear()
            else:
                return self.rate()
        self.samples.append((now, arrivals))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()
        return self.rate()

    def rate(self) -> float:
        """Arrivals per second: max(trimmed rate over the window, held rate over hold_s); 0 before
        two samples."""
        if len(self.samples) < 2:
            return 0.0
        return max(self.trimmed(), self.held())

    def intervals(self) -> list[tuple[float, int]]:
        """(seconds, arrivals) between consecutive samples."""
        points = list(self.samples)
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(points, points[1:], strict=False)]

    def trimmed(self) -> float:
        intervals = self.intervals()
        span = sum(seconds for seconds, _ in intervals)
        trim = min(self.hold_s / PARTS, span / 2)
        kept_s, kept = span, float(sum(count for _, count in intervals))
        for seconds, count in sorted(intervals, key=lambda item: item[1] / item[0], reverse=True):
            if trim <= 0:
                break
            part = min(seconds, trim)  # an interval longer than what is left to trim: a share of it
            kept_s -= part
            kept -= count * part / seconds
            trim -= part
        return kept / kept_s if kept_s > 0 else 0.0

    def trend(self) -> float:
        """How fast the demand rises, in jobs/s per second: the held rate now less the held rate
        TREND_HOLDS x hold_s ago (within the window), over that span; 0 while it falls or before the
        history covers it. Built from held rates it ignores a burst as they do: a rise must last to
        count; over two holds rather than one, the Poisson noise of two held rates is halved."""
        span = min(TREND_HOLDS * self.hold_s, self.window_s - self.hold_s)
        if span <= 0 or len(self.samples) < 2 or self.samples[-1][0] - self.samples[0][0] < span + self.hold_s:
            return 0.0
        return max(0.0, (self.held() - self.held(self.samples[-1][0] - span)) / span)

    def held(self, end: float | None = None) -> float:
        """The lowest of the rates over the PARTS equal parts of the hold_s up to `end` (default:
        the last sample; less when the history is shorter)."""
        now = self.samples[-1][0] if end is None else end
        span = min(self.hold_s, now - self.samples[0][0])
        if span <= 0:
            return 0.0
        edges = [now - span + span * index / PARTS for index in range(PARTS + 1)]
        counts = [self.arrivals_at(b) - self.arrivals_at(a) for a, b in zip(edges, edges[1:], strict=False)]
        return min(counts) / (span / PARTS)

    def arrivals_at(self, t: float) -> float:
        """Arrivals so far at time t, interpolated linearly between samples."""
        points = self.samples
        if t <= points[0][0]:
            return float(points[0][1])
        for (t0, a0), (t1, a1) in zip(points, list(points)[1:], strict=False):
            if t <= t1:
                return a0 + (a1 - a0) * (t - t0) / (t1 - t0)
        return float(points[-1][1])
