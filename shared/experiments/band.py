"""The simulator's band: what it predicts over what an experiment does not control.

An experiment through the services cannot choose two things the simulator must fix:
- **the phase of the plan period**: the controller plans every period from its own start, and a
  run replays its trace once the first plan's workers are up (20-odd seconds for 16 on this
  machine, never the same), so which burst of the trace a planning instant meets is chance;
- **what a worker start takes**: measured at 3 s for one and 21-23 s for 16 at once on one host
  (`worker_start_s` + `worker_start_each_s` per other start), give or take half a second a start.

A policy whose decisions follow the queue (diffserve, proteus, the paper's planner) decides
differently when a planning instant moves by a second, and its violations move by points (about
4 on trace_1to58qps for hadis-paper). One simulated run is then one draw, and comparing an
experiment with it at 1 point says more about the draw than about the simulator. The band is the
simulator over a grid of both (`perturbations`): an experiment agrees with the simulator when it
lies within the band widened by the agreement target (`agrees`). The nominal run (phase 0, the
settings' start times) is the first of the grid and is what `hadis simulate` reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PHASES = 4  # planning instants tried per plan period: 0, 1/4, 1/2, 3/4 of it
START_SPREAD_S = 0.5  # a worker start, give or take (one start measured at 3 s)
START_EACH_SPREAD_S = 0.15  # each other start at once, give or take (16 at once: 21-23 s)
VIOLATION_TOLERANCE = 0.01  # the agreement target: 1 percentage point of violations
FID_TOLERANCE = 0.3  # and 0.3 of mean FID


@dataclass(frozen=True)
class Perturbation:
    """One simulated run of the band: how long the controller ran before the trace (the plan
    period's phase), and what a worker start takes."""

    offset_s: float
    worker_start_s: float
    worker_start_each_s: float


@dataclass(frozen=True)
class Point:
    """What a run gave: its SLO violation ratio and mean FID (None when nothing was done)."""

    violations: float
    fid: float | None


@dataclass(frozen=True)
class Band:
    """The range of the simulator's results over the perturbations; `nominal` is the first."""

    nominal: Point
    violations: tuple[float, float]
    fid: tuple[float, float] | None
    runs: int

    @classmethod
    def of(cls, points: Sequence[Point]) -> Band:
        if not points:
            raise ValueError("a band needs at least one run")
        violations = [point.violations for point in points]
        fids = [point.fid for point in points if point.fid is not None]
        return cls(points[0], (min(violations), max(violations)), (min(fids), max(fids)) if fids else None,
                   len(points))

    def to_json(self) -> dict:
        return {"nominal": {"violations": self.nominal.violations, "fid": self.nominal.fid},
                "violations": list(self.violations), "fid": list(self.fid) if self.fid else None, "runs": self.runs}

    @classmethod
    def from_json(cls, data: dict) -> Band:
        nominal = Point(float(data["nominal"]["violations"]), data["nominal"]["fid"])
        fid = data.get("fid")
        return cls(nominal, (float(data["violations"][0]), float(data["violations"][1])),
                   (float(fid[0]), float(fid[1])) if fid else None, int(data["runs"]))


def perturbations(period_s: float, worker_start_s: float, worker_start_each_s: float) -> list[Perturbation]:
    """The grid: PHASES phases of the plan period, each with the nominal, the short and the long
    start times (12 runs); the nominal run first."""
    starts = [(worker_start_s, worker_start_each_s),
              (max(worker_start_s - START_SPREAD_S, 0.0), max(worker_start_each_s - START_EACH_SPREAD_S, 0.0)),
              (worker_start_s + START_SPREAD_S, worker_start_each_s + START_EACH_SPREAD_S)]
    return [Perturbation(round(period_s * k / PHASES, 6), start, each)
            for k in range(PHASES) for start, each in starts]


def within(value: float, bounds: tuple[float, float], tolerance: float) -> bool:
    return bounds[0] - tolerance <= value <= bounds[1] + tolerance


def agrees(point: Point, band: Band) -> bool:
    """An experiment's result agrees with the simulator: its violations and its mean FID each lie
    within the band widened by the agreement target."""
    if not within(point.violations, band.violations, VIOLATION_TOLERANCE):
        return False
    if point.fid is None or band.fid is None:
        return point.fid is None and band.fid is None
    return within(point.fid, band.fid, FID_TOLERANCE)


def points_of(reports: Iterable[dict]) -> list[Point]:
    """From report.json contents."""
    return [Point(float(report["slo_violation_ratio"]), report.get("mean_fid")) for report in reports]
