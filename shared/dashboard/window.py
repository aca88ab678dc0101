"""Windowed aggregates of the fleet's recent work, in bounded memory: what the dashboard charts.

Time is cut into buckets of `bucket_s` (2 s); the window keeps the last `span_s` (300 s) of them and
forgets older ones. A bucket holds counters, not jobs: arrivals per tier, the last queue depths and
plan fractions sampled in it, the judge's verdicts, and per group (all jobs, each tenant, each
latency class) the jobs that ended in it: within their SLO, late, expired or failed, a histogram of
the done jobs' latencies on fixed log-spaced bins (LATENCY_BINS over 1 ms to 3,600 s: a percentile
read from it is within half a bin, about 4 %, of the exact one), and per model pair the counts the
quality accounting needs (done, routed straight to heavy, escalated). So the memory is
buckets x groups x bins, whatever the load: 150 x (2 + MAX_TENANTS + MAX_CLASSES) x 200 counters
at most, and a job costs O(1) to add.

Quality follows the experiments' accounting (shared/experiments/report.py): FID is a set-level
metric, never averaged per image; a group's FID is the quality table's at its pair and realised r
and d, a window's the mean over pairs weighted by their done jobs. Without a quality table for the
profile (tiny-cpu) there is no FID, and the quality fields are None.

No I/O here: services/api/dashboard.py feeds it from the store's event stream, and
tests/test_dashboard_window.py drives it directly."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

BUCKET_S = 2.0
SPAN_S = 300.0
MAX_TENANTS = 32  # distinct tenants a bucket counts by name; the others are counted as OTHER
MAX_CLASSES = 8  # distinct latency classes likewise
OTHER = "(other)"
ALL = "all"
LATENCY_BINS = 200
LATENCY_MIN_S, LATENCY_MAX_S = 1e-3, 3600.0
_LOG_MIN = math.log(LATENCY_MIN_S)
_LOG_STEP = (math.log(LATENCY_MAX_S) - _LOG_MIN) / LATENCY_BINS
TIERS = ("light", "heavy")


class FidOf(Protocol):
    """A served mix's FID (shared.experiments.report.FidLookup.fid)."""

    def fid(self, light: str, heavy: str, r: float, d: float) -> float: ...


def latency_bin(latency_s: float) -> int:
    """The histogram bin of a latency (clamped to the first and last bins)."""
    if latency_s <= LATENCY_MIN_S:
        return 0
    return min(int((math.log(latency_s) - _LOG_MIN) / _LOG_STEP), LATENCY_BINS - 1)


def bin_value(index: int) -> float:
    """A bin's representative latency: its geometric middle."""
    return math.exp(_LOG_MIN + (index + 0.5) * _LOG_STEP)


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The q-quantile (0-1) of the latencies counted in `hist`; None when it counts none."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = max(math.ceil(q * total), 1)
    return bin_value(int(np.searchsorted(np.cumsum(hist), rank)))


@dataclass(frozen=True)
class Finished:
    """A job that reached a terminal state, as the dashboard counts it."""

    at: float  # when it ended (the store's clock)
    state: str  # done, failed or expired
    tenant: str = ""
    slo_s: float | None = None  # its objective (deadline - submitted_at)
    latency_s: float | None = None  # submitted to ended
    tier: str | None = None  # the tier whose image it was served
    escalated: bool = False
    pair: tuple[str, str] | None = None  # the (light, heavy) models of the plan it was routed under

    @property
    def within_slo(self) -> bool:
        return self.state == "done" and self.latency_s is not None and \
            (self.slo_s is None or self.latency_s <= self.slo_s)

    @property
    def latency_class(self) -> str:
        """The job's latency class: its objective in whole seconds (`hadis-<N>s` in the Images API)."""
        return "-" if self.slo_s is None else f"{max(round(self.slo_s), 1)}s"


@dataclass
class Stats:
    """The jobs of one group that ended in one bucket (or merged over many)."""

    ended: int = 0
    within: int = 0
    late: int = 0
    expired: int = 0
    failed: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(LATENCY_BINS, dtype=np.int64))
    pairs: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # pair -> [done, routed, escalated]

    def add(self, job: Finished) -> None:
        self.ended += 1
        if job.state == "done":
            self.within += job.within_slo
            self.late += not job.within_slo
            if job.latency_s is not None:
                self.hist[latency_bin(job.latency_s)] += 1
            if job.pair is not None:
                counts = self.pairs.setdefault(job.pair, [0, 0, 0])
                counts[0] += 1
                counts[1] += job.tier == "heavy" and not job.escalated
                counts[2] += job.escalated
        elif job.state == "expired":
            self.expired += 1
        else:
            self.failed += 1

    def merge(self, other: Stats) -> None:
        self.ended += other.ended
        self.within += other.within
        self.late += other.late
        self.expired += other.expired
        self.failed += other.failed
        self.hist += other.hist
        for pair, counts in other.pairs.items():
            mine = self.pairs.setdefault(pair, [0, 0, 0])
            for index, count in enumerate(counts):
                mine[index] += count

    @property
    def done(self) -> int:
        return self.within + self.late

    def fid(self, lookup: FidOf | None) -> float | None:
        """The FID of these done jobs (the experiments' accounting), when a quality table prices them."""
        if lookup is None:
            return None
        weighted, jobs = 0.0, 0
        for (light, heavy), (done, routed, escalated) in self.pairs.items():
            light_path = done - routed
            try:
                value = lookup.fid(light, heavy, routed / done, escalated / light_path if light_path else 0.0)
            except (ValueError, KeyError):  # a pair or model the table does not price
                continue
            if math.isfinite(value):
                weighted, jobs = weighted + value * done, jobs + done
        return weighted / jobs if jobs else None

    def summary(self, lookup: FidOf | None) -> dict[str, Any]:
        return {"ended": self.ended, "done": self.done, "within_slo": self.within, "late": self.late,
                "expired": self.expired, "failed": self.failed,
                "attainment": self.within / self.ended if self.ended else None,
                "p50_s": percentile(self.hist, 0.5), "p99_s": percentile(self.hist, 0.99), "fid": self.fid(lookup)}


@dataclass
class Bucket:
    """What happened in one bucket of time."""

    arrivals: dict[str, int] = field(default_factory=lambda: {ALL: 0, "light": 0, "heavy": 0})
    depths: dict[str, int] = field(default_factory=dict)  # the last sample: tier -> jobs queued
    plan: dict[str, float] = field(default_factory=dict)  # the last sample: r, d of the plan
    judged: int = 0
    escalated: int = 0
    groups: dict[str, Stats] = field(default_factory=dict)  # ALL, "tenant:<t>", "class:<c>"

    def group(self, kind: str, name: str, bound: int) -> Stats:
        key = f"{kind}:{name}"
        if key not in self.groups and sum(k.startswith(f"{kind}:") for k in self.groups) >= bound:
            key = f"{kind}:{OTHER}"
        return self.groups.setdefault(key, Stats())


class Window:
    """The last `span_s` seconds in buckets of `bucket_s` (the module's docstring)."""

    def __init__(self, bucket_s: float = BUCKET_S, span_s: float = SPAN_S) -> None:
        self.bucket_s = bucket_s
        self.count = max(int(round(span_s / bucket_s)), 2)
        self.buckets: dict[int, Bucket] = {}
        self.newest = -1  # the newest bucket index seen
        self.oldest: int | None = None  # the oldest bucket index ever counted in (the window's data start there)

    def bucket(self, at: float) -> Bucket | None:
        """The bucket of time `at`; None for one older than the window (dropped)."""
        index = int(at // self.bucket_s)
        if index > self.newest:
            self.newest = index
            for old in [old for old in self.buckets if old <= index - self.count]:
                del self.buckets[old]
        if index <= self.newest - self.count:
            return None
        self.oldest = index if self.oldest is None else min(self.oldest, index)
        return self.buckets.setdefault(index, Bucket())

    def covered_s(self, now: float) -> float:
        """How much of the window's complete buckets holds data: all of it once it has run that long."""
        closed = [index for index, _ in self.closed(now)]
        if self.oldest is None or not closed:
            return 0.0
        return max(closed[-1] - max(self.oldest, closed[0]) + 1, 0) * self.bucket_s

    def arrived(self, at: float, tier: str = ALL, jobs: int = 1) -> None:
        """`jobs` arrived at the system (ALL) or at a tier's queue."""
        if (bucket := self.bucket(at)) is not None:
            bucket.arrivals[tier] = bucket.arrivals.get(tier, 0) + jobs

    def judged(self, at: float, escalated: bool) -> None:
        if (bucket := self.bucket(at)) is not None:
            bucket.judged += 1
            bucket.escalated += escalated

    def sampled(self, at: float, depths: Mapping[str, int], r: float | None = None, d: float | None = None) -> None:
        """Queue depths (tier -> jobs) and the plan's fractions seen at `at`."""
        if (bucket := self.bucket(at)) is not None:
            bucket.depths.update(depths)
            bucket.plan.update({name: value for name, value in (("r", r), ("d", d)) if value is not None})

    def finished(self, job: Finished) -> None:
        if (bucket := self.bucket(job.at)) is None:
            return
        bucket.groups.setdefault(ALL, Stats()).add(job)
        bucket.group("tenant", job.tenant or "-", MAX_TENANTS).add(job)
        bucket.group("class", job.latency_class, MAX_CLASSES).add(job)

    def closed(self, now: float) -> list[tuple[int, Bucket | None]]:
        """(index, bucket or None) of every complete bucket of the window, oldest first (the bucket
        of `now` is still filling, and is left out)."""
        current = int(now // self.bucket_s)
        return [(index, self.buckets.get(index)) for index in range(current - self.count + 1, current)]

    def totals(self, now: float, since_s: float | None = None) -> dict[str, Stats]:
        """Every group's jobs ended over the window's complete buckets (or the last since_s of them)."""
        merged: dict[str, Stats] = {}
        buckets = self.closed(now)
        if since_s is not None:
            buckets = buckets[-max(int(since_s // self.bucket_s), 1):]
        for _, bucket in buckets:
            for key, stats in (bucket.groups.items() if bucket else ()):
                merged.setdefault(key, Stats()).merge(stats)
        return merged

    def verdicts(self, now: float) -> tuple[int, int]:
        """(judged, escalated) over the window's complete buckets."""
        buckets = [bucket for _, bucket in self.closed(now) if bucket is not None]
        return sum(bucket.judged for bucket in buckets), sum(bucket.escalated for bucket in buckets)


def series(window: Window, now: float, lookup: FidOf | None) -> dict[str, list]:
    """The charts' points, one per complete bucket, oldest first: `t` is seconds before `now`; rates
    are per second; a point with nothing to measure is None (a gap in the chart)."""
    points: dict[str, list] = {name: [] for name in (
        "t", "arrivals", "arrivals_light", "arrivals_heavy", "depth_light", "depth_heavy", "attainment", "p50_s",
        "p99_s", "fid", "escalation", "d", "ended")}
    for index, bucket in window.closed(now):
        points["t"].append(round((index + 1) * window.bucket_s - now, 1))
        bucket = bucket or Bucket()
        for tier, name in ((ALL, "arrivals"), ("light", "arrivals_light"), ("heavy", "arrivals_heavy")):
            points[name].append(bucket.arrivals.get(tier, 0) / window.bucket_s)
        for tier in TIERS:
            points[f"depth_{tier}"].append(bucket.depths.get(tier))
        stats = bucket.groups.get(ALL) or Stats()
        summary = stats.summary(lookup) if stats.ended else {}
        for name in ("attainment", "p50_s", "p99_s", "fid"):
            points[name].append(summary.get(name))
        points["ended"].append(stats.ended)
        points["escalation"].append(bucket.escalated / bucket.judged if bucket.judged else None)
        points["d"].append(bucket.plan.get("d"))
    return points


def groups(totals: Mapping[str, Stats], kind: str, lookup: FidOf | None) -> list[dict[str, Any]]:
    """One row per group of `kind` (tenant or class) over the window, the busiest first."""
    rows = [{"name": key.split(":", 1)[1], **stats.summary(lookup)} for key, stats in totals.items()
            if key.startswith(f"{kind}:")]
    return sorted(rows, key=lambda row: (-row["ended"], row["name"]))


def overall(window: Window, now: float, lookup: FidOf | None) -> dict[str, Any]:
    """The window's headline figures: every job ended in it, the arrival rate over the part of it that
    holds data (`window_s`: less than the span while the page has looked for less), the judge's
    realised escalation rate."""
    totals = window.totals(now)
    judged, escalated = window.verdicts(now)
    seconds = window.covered_s(now)
    arrived = sum(bucket.arrivals.get(ALL, 0) for _, bucket in window.closed(now) if bucket)
    return {**(totals.get(ALL) or Stats()).summary(lookup), "window_s": seconds,
            "arrivals_qps": arrived / seconds if seconds else None,
            "judged": judged, "escalation": escalated / judged if judged else None,
            "tenants": groups(totals, "tenant", lookup), "classes": groups(totals, "class", lookup)}

