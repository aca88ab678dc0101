"""A worker's busy-time counters go on from its GPU's previous worker's.

A worker exports its model's busy time by class (`hadis_class_busy_seconds_total`, and the part
that stopped batches lost, `hadis_batch_yield_lost_seconds_total`). Counters live in the process,
so a worker that stops (its GPU moved to the other tier: a planned restart) took with it whatever
it ran after the last scrape, and its final batches end just before it exits: every tier change
hid up to a pipeline of batches from Prometheus and from `hadis experiment`'s busy time (36 of
the interactive class's 4,420 GPU-seconds in one run of issue 31's experiment, 13 restarts).

So the agent names a file per GPU (HADIS_BUSY_CARRY_FILE). A worker leaves its totals there when
its process ends, whatever ended it short of a kill; the next worker on that GPU takes them (and
deletes the file) before its metrics are served, starts its counters from them, and says what it
carried in `hadis_carried_seconds{counter,priority}`. The GPU's counters then never reset on a
planned restart. A killed worker leaves no file: its successor carries nothing, its counters
restart from 0 as any restarted process's do, and a reader sees a reset (its carried figures are
below what it last read; shared/experiments/class_runner.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from shared import metrics
from shared.logging import get_logger

log = get_logger(__name__)

# Each carried counter: its name (as the file and `hadis_carried_seconds` give it) and label names.
CARRIED_COUNTERS: dict[str, tuple[Counter, tuple[str, ...]]] = {
    "hadis_class_busy_seconds": (metrics.CLASS_BUSY, ("tier", "priority")),
    "hadis_batch_yield_lost_seconds": (metrics.BATCH_YIELD_LOST, ("tier",))}
CARRIED = Gauge("hadis_carried_seconds", "What this worker's busy-time counters started from: its GPU's previous "
                "worker's totals, left when it stopped (0: nothing carried, e.g. after a kill), by counter and "
                "class (\"\" where the counter has none)", ["counter", "priority"], registry=metrics.REGISTRY)
PRIORITY_NONE = ""  # the label of a carried counter that has no class
MAX_FILE_BYTES = 65_536  # a few dozen series; anything larger is not ours


def totals() -> dict[str, list[dict[str, Any]]]:
    """Every carried counter's series: its labels and value."""
    return {name: [{"labels": sample.labels, "value": sample.value}
                   for family in counter.collect() for sample in family.samples if sample.name.endswith("_total")]
            for name, (counter, _) in CARRIED_COUNTERS.items()}


def leave(path: Path) -> None:
    """Write this process's totals for the next worker on its GPU (atomically: a reader sees all or
    nothing)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(totals()))
        os.replace(partial, path)
    except OSError as error:  # the next worker's counters start from 0, as after a kill
        log.warning("busy_not_carried", path=str(path), error=str(error))


def take(path: Path) -> None:
    """Start this process's counters from what the previous worker left, and delete it (a file
    left by an older worker must never be carried twice)."""
    for name, (_, names) in CARRIED_COUNTERS.items():  # exported as 0 when nothing is carried
        for priority in metrics.PRIORITIES if "priority" in names else (PRIORITY_NONE,):
            CARRIED.labels(name, priority)
    try:
        if (size := path.stat().st_size) > MAX_FILE_BYTES:
            raise ValueError(f"{size} bytes")
        left = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as error:
        log.warning("busy_carry_unreadable", path=str(path), error=str(error))
        left = {}
    finally:
        path.unlink(missing_ok=True)
    for name in CARRIED_COUNTERS:
        for series in left.get(name, []) if isinstance(left, dict) else []:
            carry_series(name, series)


def carry_series(name: str, series: Any) -> None:
    """One series of the file, added to its counter; anything malformed is skipped."""
    counter, names = CARRIED_COUNTERS[name]
    labels, value = (series.get("labels"), series.get("value")) if isinstance(series, dict) else (None, None)
    if not isinstance(labels, dict) or set(labels) != set(names) or labels.get("tier") not in metrics.TIERS \
            or labels.get("priority", PRIORITY_NONE) not in (*metrics.PRIORITIES, PRIORITY_NONE) \
            or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return
    counter.labels(**labels).inc(value)
    CARRIED.labels(name, labels.get("priority", PRIORITY_NONE)).inc(value)
