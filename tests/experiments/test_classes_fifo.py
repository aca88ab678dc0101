"""The single-queue FIFO baseline of the service classes (shared/experiments/fifo_sim.py), against
the classes (shared/experiments/classes_sim.py); and a classes-mode batch job too late on the heavy
tier, which moves to the light tier's batch queue as in the services."""

import json

import numpy as np
import pytest

from shared import cli
from shared.experiments.classes_sim import BatchLoad, ClassSimulation, simulate_classes
from shared.experiments.fifo_sim import FifoSimulation, simulate_fifo, split_busy
from shared.experiments.simulator import SimJob, simulate
from shared.experiments.trace import Trace
from shared.schemas import Tier
from tests.experiments.test_classes_sim import while_alone_ran
from tests.experiments.test_simulator import settings_for, steady


def queued_at(simulation, t_s: float) -> dict:
    """The batch jobs waiting at `t_s` in the tier queues (and, in classes mode, the batch queues)."""
    seen: dict = {}

    def look() -> None:
        fleet = simulation.fleet
        seen["tier"] = sum(job.priority == "batch" for queue in fleet.queues.values() for job in queue)
        seen["batch"] = sum(len(queue) for queue in getattr(fleet, "batch_queues", {}).values())

    simulation.at(t_s, look)
    simulation.run()
    return seen


def test_fifo_puts_batch_jobs_in_the_tier_queues_and_classes_mode_in_the_batch_queues():
    trace, batch = steady(4.0, 30.0), BatchLoad(1000, 600.0, at_s=1.0)
    fifo = queued_at(FifoSimulation(settings_for("hadis"), trace, batch), 1.0 + 1e-6)
    classes = queued_at(ClassSimulation(settings_for("hadis"), trace, batch), 1.0 + 1e-6)
    assert fifo["tier"] > 500 and fifo["batch"] == 0
    assert classes["tier"] == 0 and classes["batch"] > 500


def test_fifo_batch_jobs_move_the_interactive_plan_and_classes_do_not():
    """Without classes the controller counts the burst as demand and queued work: the plan moves
    (the opposite of classes mode, where the interactive plan is the trace's alone)."""
    trace = steady(4.0, 60.0)
    outcomes, alone, _ = simulate(settings_for("hadis"), trace)
    classes = simulate_classes(settings_for("hadis"), trace, BatchLoad(1000, 600.0, at_s=1.0))
    fifo = simulate_fifo(settings_for("hadis"), trace, BatchLoad(1000, 600.0, at_s=1.0))
    assert while_alone_ran(classes.plans, outcomes) == alone
    assert while_alone_ran(fifo.plans, outcomes) != alone
    assert fifo.placements == [] and fifo.yield_mode == "fifo"
    assert len(fifo.batch) == 1000 and all(job.priority == "batch" and job.slo_s == 600.0 for job in fifo.batch)
    assert all(job.state in ("done", "expired") for job in fifo.interactive + fifo.batch)
    # Batch jobs are routed and judged as any job: the cascade's pair, some routed heavy or escalated.
    assert all(job.cascade for job in fifo.batch if job.state == "done")


def one_heavy_gpu(mode: str | None):
    """One heavy GPU serving sd35-large in batches of 4 (9.72 s), 8 batch jobs submitted at 0 s and
    an interactive job at 1 s with a 6 s objective: behind one batch of batch jobs it would end at
    about 12 s. `mode` None: the FIFO baseline."""
    settings = settings_for("static", gpus=1, plan_light_gpus=0, plan_heavy_gpus=1, plan_light_model="sd35-large",
                            plan_heavy_model="sd35-large", plan_heavy_batch=4, plan_light_batch=4, plan_r=1.0,
                            plan_d=0.0, batch_yield=mode or "step")
    trace, batch = Trace("one", np.array([1.0]), np.array([7])), BatchLoad(8, 120.0)
    return simulate_fifo(settings, trace, batch) if mode is None else simulate_classes(settings, trace, batch)


def test_fifo_makes_the_interactive_job_late_and_classes_do_not():
    fifo, classes = one_heavy_gpu(None), one_heavy_gpu("step")
    (late,), (served,) = fifo.interactive, classes.interactive
    assert not late.within_slo and late.state == "expired"  # shed: it could not end in time behind the batch
    assert served.state == "done" and served.within_slo
    for run in (fifo, classes):
        assert all(job.state == "done" and job.within_slo for job in run.batch)


def test_a_mixed_batch_splits_its_gpu_time_between_the_classes_by_jobs():
    jobs = [SimJob(0, 0.0, 6.0, 0), SimJob(1, 0.0, 900.0, 1, priority="batch"),
            SimJob(2, 0.0, 900.0, 2, priority="batch"), SimJob(3, 0.0, 900.0, 3, priority="batch")]
    interactive, batch = split_busy("g", jobs, 10.0, 14.0)
    assert (interactive.priority, interactive.start_s, interactive.end_s) == ("interactive", 10.0, 11.0)
    assert (batch.priority, batch.start_s, batch.end_s) == ("batch", 11.0, 14.0)
    assert [part.priority for part in split_busy("g", jobs[1:], 10.0, 14.0)] == ["batch"]


def heavy_and_light(deadline_s: float):
    """A batch job admitted by the heavy worker (sd35-large, 2.7 s alone) with `deadline_s` left;
    a light worker (sd35-large-turbo, 0.13 s) beside it."""
    settings = settings_for("static", gpus=2, plan_light_gpus=1, plan_heavy_gpus=1,
                            plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large", plan_heavy_batch=1,
                            plan_light_batch=1, plan_r=0.0, plan_d=0.0)
    sim = ClassSimulation(settings, Trace("late", np.array([100.0]), np.array([0])), BatchLoad(1, 900.0, at_s=50.0))
    sim.now = 0.0
    sim.control()
    for worker in sim.fleet.workers.values():
        worker.ready_at = 0.0
    sim.fleet.refresh_serving()
    job = sim.batch_jobs[0]
    job.plan, job.deadline_s = sim.in_force, deadline_s
    heavy = sim.fleet.serving[Tier.heavy][0]
    heavy.batch_buffer.append(job)
    sim.fleet.admit_one(heavy, heavy.batch_buffer)
    return job, sim.fleet.serving[Tier.light][0]


def test_a_batch_job_too_late_on_the_heavy_tier_moves_to_the_light_tiers_batch_queue():
    job, light = heavy_and_light(1.0)  # the light model makes 1 s, the heavy one does not
    assert job.state == "lost" and not job.routed_heavy  # not ended: moved
    assert [queued for batch, _ in light.batches for queued in batch] == [job]
    job, light = heavy_and_light(0.05)  # neither makes it: shed
    assert job.state == "expired" and not light.batches


def test_hadis_simulate_batch_mode_fifo_writes_the_same_report_shape(tmp_path, capsys):
    out = tmp_path / "fifo"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "--trace", "traces/trace_1to40qps.txt", "--head", "20", "--policy", "hadis",
                  "--gpus", "8", "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(out),
                  "--batch-jobs", "40", "--batch-slo-s", "120", "--batch-mode", "fifo"])
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert exit_.value.code == 0
    assert report["classes"]["batch_settings"] == {"jobs": 40, "at_s": 0.0, "slo_s": 120.0, "yield": "fifo"}
    assert set(report["classes"]) >= {"interactive", "batch", "gpu_seconds", "batch_fid_gain", "batch_all_in_time"}
    assert report["classes"]["interactive"]["jobs"] == report["submitted"]
    assert (out / "classes.csv").is_file() and (out / "classes.png").is_file()


@pytest.mark.parametrize("extra", [["--batch-yield", "step"], []])
def test_fifo_with_a_yield_or_without_batch_jobs_is_an_argument_error(tmp_path, capsys, extra):
    batch = ["--batch-jobs", "5"] if extra else []
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "--trace", "traces/trace_1to40qps.txt", "--policy", "hadis", "--gpus", "8",
                  "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(tmp_path / "x"), "--batch-mode", "fifo",
                  *batch, *extra])
    assert exit_.value.code == 2 and "--batch-mode fifo" in capsys.readouterr().err
