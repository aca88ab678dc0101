"""The experiment runner's service classes (shared/experiments/class_runner.py): the workers' busy
time by class from successive reads of their counters, and the plan log's batch placements."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from shared import cli
from shared.experiments.class_runner import BusyLog, Counters
from shared.experiments.runner import PlanLog
from shared.schemas import Plan


def page(busy: dict[str, float], lost: float = 0.0, started: float = 1000.0,
         carried: dict[str, float] | None = None) -> str:
    """A worker's metrics page with its class counters, as prometheus_client writes it (`carried`:
    what they started from, by class and "lost", as shared/busy_carry.py exports it)."""
    registry = CollectorRegistry()
    counter = Counter("hadis_class_busy_seconds", "", ["tier", "priority"], registry=registry)
    for priority, seconds in busy.items():
        counter.labels("heavy", priority).inc(seconds)
    if lost:
        Counter("hadis_batch_yield_lost_seconds", "", ["tier"], registry=registry).labels("heavy").inc(lost)
    if carried is not None:
        gauge = Gauge("hadis_carried_seconds", "", ["counter", "priority"], registry=registry)
        for key, seconds in carried.items():
            labels = ("hadis_batch_yield_lost_seconds", "") if key == "lost" else ("hadis_class_busy_seconds", key)
            gauge.labels(*labels).set(seconds)
    return f"process_start_time_seconds {started}\n" + generate_latest(registry).decode()


def test_a_page_is_read_into_busy_seconds_by_class():
    counters = Counters.parse(page({"interactive": 2.5, "batch": 4.0}, lost=1.0, started=1234.5,
                                   carried={"interactive": 1.5, "batch": 0.0, "lost": 0.25}))
    assert (counters.started, counters.busy, counters.lost) == (1234.5, {"interactive": 2.5, "batch": 4.0}, 1.0)
    assert counters.carried == Counters(1234.5, {"interactive": 1.5, "batch": 0.0}, 0.25)


def test_what_each_counter_grew_by_is_a_span_before_the_read():
    log = BusyLog()
    log.observe("g0", Counters.parse(page({})), 0.0)
    log.observe("g0", Counters.parse(page({"interactive": 2.0})), 3.0)
    log.observe("g0", None, 3.5)  # the port did not answer: nothing is known, nothing reset
    log.observe("g0", Counters.parse(page({"interactive": 2.0, "batch": 1.5}, lost=0.5)), 5.0)
    spans = [(b.priority, b.start_s, b.end_s, b.lost) for b in log.busy]
    assert spans == [("interactive", 1.0, 3.0, False), ("batch", 4.0, 5.0, False), ("batch", 3.5, 4.0, True)]
    assert (log.processes, log.gone) == (1, 0)


def test_a_replaced_worker_counts_from_zero():
    """A GPU moved to another tier: a new worker process on the same port, its counters from zero
    (told by its start time, or by a counter that went back)."""
    log = BusyLog()
    log.observe("g0", Counters.parse(page({"interactive": 10.0})), 10.0)
    log.observe("g0", Counters.parse(page({"interactive": 12.0}, started=2000.0)), 20.0)
    log.observe("g0", Counters(None, {"batch": 1.0}), 30.0)  # no start time: the interactive counter is gone
    assert [(b.priority, b.end_s - b.start_s) for b in log.busy] == [("interactive", 10.0), ("interactive", 12.0),
                                                                     ("batch", 1.0)]
    assert (log.processes, log.gone) == (3, 2)


def test_a_successor_that_carried_on_brings_what_was_not_read_of_its_predecessor():
    """The old worker ran 3 s more after the last read and exited; the new one started its counters
    from the old one's final totals and ran 1 s of batch: both are counted at its first read."""
    log = BusyLog()
    log.observe("g0", Counters.parse(page({"interactive": 10.0})), 10.0)
    successor = page({"interactive": 13.0, "batch": 1.0}, started=2000.0, carried={"interactive": 13.0, "batch": 0.0})
    log.observe("g0", Counters.parse(successor), 20.0)
    assert [(b.priority, b.end_s - b.start_s) for b in log.busy] == [("interactive", 10.0), ("interactive", 3.0),
                                                                     ("batch", 1.0)]
    assert (log.processes, log.gone, log.carried) == (2, 0, 1)


def test_a_successor_of_a_killed_worker_counts_from_what_it_carried():
    """A killed worker left nothing: its successor carried less than was read of it (here a file an
    older worker had left could not be there: a worker deletes it as it starts), so it counts from
    what it carried, and what the killed one ran after the last read is not seen."""
    log = BusyLog()
    log.observe("g0", Counters.parse(page({"interactive": 10.0})), 10.0)
    log.observe("g0", Counters.parse(page({"interactive": 2.0}, started=2000.0, carried={"interactive": 0.0})), 20.0)
    assert [(b.priority, b.end_s - b.start_s) for b in log.busy] == [("interactive", 10.0), ("interactive", 2.0)]
    assert (log.processes, log.gone, log.carried) == (2, 1, 0)


def plan(version: int, **fields) -> Plan:
    return Plan(**{"version": version, "light_model": "sdxl-lightning", "heavy_model": "sd35-large", "r": 0.3,
                   "d": 0.2, "light_batch": 4, "heavy_batch": 2, "created_at": float(version), **fields})


def test_a_version_that_moves_only_the_batch_placement_is_no_plan_change():
    log = PlanLog(started_at=100.0)
    log.backlog = lambda: 42
    log.observe(plan(1), 100.0)
    log.observe(plan(2, batch_heavy=0.5, reason="batch"), 101.0)
    log.observe(plan(3, batch_heavy=0.5, r=0.4), 102.0)
    log.observe(plan(4, batch_heavy=0.5, r=0.5, batch_first=["g0"]), 103.0)
    assert [event.t_s for event in log.events] == [0.0, 2.0, 3.0]
    assert [(p.t_s, p.batch_heavy, p.reserved, p.backlog) for p in log.placements] == \
        [(0.0, 1.0, 0, 42), (1.0, 0.5, 0, 42), (3.0, 0.5, 1, 42)]
    second = log.at_version(2)
    assert second is not None and second.batch_heavy == pytest.approx(0.5)


def test_a_batch_objective_outside_its_bounds_is_an_argument_error(tmp_path, capsys):
    """Not a settings traceback from the services' start: the command says what it takes."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experiment", "--trace", "traces/trace_1to40qps.txt", "--policy", "hadis", "--gpus", "2",
                  "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(tmp_path / "x"), "--batch-jobs", "5",
                  "--batch-slo-s", "7200"])
    assert exit_.value.code == 2 and "--batch-slo-s" in capsys.readouterr().err
