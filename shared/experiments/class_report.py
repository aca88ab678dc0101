"""The per-class report of a run with a batch backlog (docs/classes.md): for each class its jobs,
done, SLO violations and mean FID (shared/experiments/report.py's accounting); the GPU-seconds each
class used (the workers' busy time, Busy), the GPU-seconds the interactive class left idle while
the trace played, and the share of those the batch class used; and `classes.csv`, each class's
share of the fleet's GPU-time per window (the figure: plots.plot_classes)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.experiments.classes_sim import Busy, PlacementEvent
from shared.experiments.report import FidLookup, JobOutcome, group_fids, weighted_mean, windows_of

CLASS_COLUMNS = ("t_s", "interactive_share", "batch_share", "batch_lost_share", "idle_share", "batch_done",
                 "batch_heavy", "batch_reserved")


def class_summary(outcomes: list[JobOutcome], lookup: FidLookup, window_s: float, duration_s: float) -> dict[str, Any]:
    """Jobs, done, within their objective, violations (late, shed, failed or lost) and the mean
    FID of the images served, for one class's outcomes (cancelled ones left out). The FID as the
    report's: per window, by the pairs' realised fractions, weighted by the jobs done."""
    fids = []
    for window in windows_of(outcomes, window_s, duration_s):
        served = [job for job in window.ended if job.state == "done"]
        fid = weighted_mean(group_fids(served, lookup))
        if fid is not None:
            fids.append((fid, len(served)))
    outcomes = [job for job in outcomes if job.state != "cancelled"]
    done = [job for job in outcomes if job.state == "done"]
    within = sum(job.within_slo for job in done)
    violations = len(outcomes) - within
    ends = [job.end_s for job in done if job.end_s is not None]
    return {"jobs": len(outcomes), "done": len(done), "within_slo": within, "violations": violations,
            "violation_ratio": violations / len(outcomes) if outcomes else 0.0,
            "expired": sum(job.state == "expired" for job in outcomes),
            "failed": sum(job.state == "failed" for job in outcomes),
            "lost": sum(job.state == "lost" for job in outcomes),
            "mean_fid": weighted_mean(fids),
            "last_end_s": max(ends) if ends else None}


def overlap(busy: Busy, start_s: float, end_s: float) -> float:
    return max(0.0, min(busy.end_s, end_s) - max(busy.start_s, start_s))


def gpu_seconds(busy: Iterable[Busy], gpus: int, duration_s: float) -> dict[str, Any]:
    """The GPU-seconds each class used while the trace played ([0, duration_s]) and in all; the
    interactive class's idle GPU-seconds in the trace (the fleet's, less its busy time), and the
    share of them the batch class used (steps lost to a yield included: the GPU was busy; the
    useful share without them beside it)."""
    busy = list(busy)
    used = {priority: sum(overlap(b, 0.0, duration_s) for b in busy if b.priority == priority)
            for priority in ("interactive", "batch")}
    lost = sum(overlap(b, 0.0, duration_s) for b in busy if b.lost)
    idle = max(gpus * duration_s - used["interactive"], 0.0)
    return {"fleet_gpu_s": gpus * duration_s, "interactive_gpu_s": used["interactive"], "batch_gpu_s": used["batch"],
            "batch_lost_gpu_s": lost, "interactive_idle_gpu_s": idle,
            "batch_use_of_idle": used["batch"] / idle if idle > 0 else None,
            "batch_useful_use_of_idle": (used["batch"] - lost) / idle if idle > 0 else None,
            "batch_gpu_s_all": sum(b.end_s - b.start_s for b in busy if b.priority == "batch"),
            "batch_lost_gpu_s_all": sum(b.end_s - b.start_s for b in busy if b.lost)}


def class_series(busy: list[Busy], batch: list[JobOutcome], placements: list[PlacementEvent], gpus: int,
                 window_s: float, end_s: float) -> list[dict[str, Any]]:
    """Per window: each class's share of the fleet's GPU-time, the idle share, batch jobs done,
    and the batch placement in force at the window's end."""
    rows = []
    for index in range(max(1, math.ceil(end_s / window_s))):
        start, stop = index * window_s, (index + 1) * window_s
        fleet = gpus * window_s
        shares = {priority: sum(overlap(b, start, stop) for b in busy if b.priority == priority) / fleet
                  for priority in ("interactive", "batch")}
        placement = next((p for p in reversed(placements) if p.t_s <= stop), None)
        rows.append({"t_s": start, "interactive_share": shares["interactive"], "batch_share": shares["batch"],
                     "batch_lost_share": sum(overlap(b, start, stop) for b in busy if b.lost) / fleet,
                     "idle_share": max(1.0 - shares["interactive"] - shares["batch"], 0.0),
                     "batch_done": sum(job.state == "done" and job.end_s is not None and start <= job.end_s < stop
                                       for job in batch),
                     "batch_heavy": placement.batch_heavy if placement else None,
                     "batch_reserved": placement.reserved if placement else None})
    return rows


def classes_section(interactive: list[JobOutcome], batch: list[JobOutcome], busy: list[Busy], lookup: FidLookup,
                    gpus: int, duration_s: float, window_s: float, settings: dict[str, Any]) -> dict[str, Any]:
    """The report's `classes`: each class's summary, the GPU-seconds, the batch settings, and the
    two comparisons the issue asks for (batch FID gain over interactive; every batch job in time)."""
    end_s = max([duration_s, *(job.end_s for job in batch if job.end_s is not None)])
    summaries = {"interactive": class_summary(interactive, lookup, window_s, duration_s),
                 "batch": class_summary(batch, lookup, window_s, end_s)}
    fids = [summaries[name]["mean_fid"] for name in ("interactive", "batch")]
    return {**summaries, "gpu_seconds": gpu_seconds(busy, gpus, duration_s), "batch_settings": settings,
            "batch_fid_gain": fids[0] - fids[1] if None not in fids else None,
            "batch_all_in_time": summaries["batch"]["within_slo"] == summaries["batch"]["jobs"]}


def write_busy_spans(out_dir: Path, busy: list[Busy]) -> Path:
    """`busy.csv`: every GPU's busy spans by class (what the shares are computed from), to find
    where a GPU stood idle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "busy.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("gpu", "priority", "start_s", "end_s", "lost"))
        for span in sorted(busy, key=lambda span: (span.gpu, span.start_s)):
            writer.writerow((span.gpu, span.priority, round(span.start_s, 4), round(span.end_s, 4), int(span.lost)))
    return path


def write_class_series(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "classes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CLASS_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else round(value, 6) if isinstance(value, float) else value
                             for key, value in row.items()})
    return path
