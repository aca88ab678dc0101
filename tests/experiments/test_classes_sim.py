"""The service classes in the simulator (shared/experiments/classes_sim.py) and their report
(shared/experiments/class_report.py)."""

import json

import numpy as np
import pytest

from shared import cli
from shared.experiments.class_report import class_series, gpu_seconds
from shared.experiments.classes_sim import BatchLoad, ClassSimulation, simulate_classes
from shared.experiments.simulator import simulate
from shared.experiments.trace import Trace
from shared.schemas import Tier
from tests.experiments.test_simulator import settings_for, steady


def while_alone_ran(plans: list, outcomes: list) -> list:
    """The plans made while the trace alone was still running (until its last job ended): the class
    simulation ticks on while its batch work runs, and the falling demand after the trace moves
    its plan there."""
    ended = max(outcome.end_s for outcome in outcomes if outcome.end_s is not None)
    return [plan for plan in plans if plan.t_s <= ended]


def test_a_batch_backlog_leaves_the_interactive_plan_sequence_unchanged():
    """The interactive plan is made from interactive demand and queues only: a burst of batch jobs
    at the start moves none of its fields (the batch placement rides beside it)."""
    trace = steady(4.0, 60.0)
    outcomes, alone, _ = simulate(settings_for("hadis"), trace)
    run = simulate_classes(settings_for("hadis"), trace, BatchLoad(1000, 600.0, at_s=1.0))
    assert while_alone_ran(run.plans, outcomes) == alone
    assert run.placements and all(job.state == "done" for job in run.batch)


def test_without_batch_jobs_the_class_simulation_is_the_simulation():
    trace = steady(6.0, 40.0)
    outcomes, plans, _ = simulate(settings_for("hadis"), trace)
    run = simulate_classes(settings_for("hadis"), trace, BatchLoad(0, 900.0))
    assert run.interactive == outcomes and run.plans == plans and run.batch == []


def test_a_backlog_on_an_idle_fleet_is_served_by_the_heavy_model_in_time():
    trace = Trace("one", np.array([0.5]), np.array([7]))
    run = simulate_classes(settings_for("hadis", gpus=4), trace, BatchLoad(60, 300.0))
    heavy_model = run.plans[0].heavy_model
    assert all(job.state == "done" and job.within_slo for job in run.batch)
    assert {(job.tier, job.heavy_model) for job in run.batch} == {("heavy", heavy_model)}
    # The one interactive job may stop a batch-class batch at a step (classes.should_yield): no more.
    assert sum(1 for busy in run.busy if busy.lost) <= 1


def one_heavy_gpu(mode: str):
    """One heavy GPU serving sd35-large in batches of 4 (9.72 s), busy with batch work from 0 s; an
    interactive job arrives at 1 s with a 6 s objective: behind the batch it would end at 12.4 s."""
    settings = settings_for("static", gpus=1, plan_light_gpus=0, plan_heavy_gpus=1, plan_light_model="sd35-large",
                            plan_heavy_model="sd35-large", plan_heavy_batch=4, plan_light_batch=4, plan_r=1.0,
                            plan_d=0.0, batch_yield=mode)
    trace = Trace("one", np.array([1.0]), np.array([7]))
    return simulate_classes(settings, trace, BatchLoad(4, 120.0))


def test_step_mode_stops_the_batch_at_a_step_and_serves_the_interactive_job_in_time():
    run = one_heavy_gpu("step")
    (job,) = run.interactive
    assert job.state == "done" and job.within_slo
    lost = [busy for busy in run.busy if busy.lost]
    assert len(lost) == 1 and lost[0].start_s == 0.0
    step_s = 9.72 / 50
    assert 1.0 <= lost[0].end_s < 1.0 + step_s + 1e-9  # the next step boundary
    assert all(batch.state == "done" and batch.within_slo for batch in run.batch)
    assert gpu_seconds(run.busy, 1, 1.0)["batch_lost_gpu_s"] == 1.0


def test_pause_mode_pauses_the_batch_at_a_step_and_resumes_it_from_there():
    """The same batch as in step mode, paused: nothing lost, its steps run once (paused at a step,
    resumed from it), and it ends sooner than in step mode, which runs it again from its start."""
    run, stepped = one_heavy_gpu("pause"), one_heavy_gpu("step")
    (job,) = run.interactive
    assert job.state == "done" and job.within_slo
    assert not any(busy.lost for busy in run.busy)
    batch_busy = sum(busy.end_s - busy.start_s for busy in run.busy if busy.priority == "batch")
    assert batch_busy == pytest.approx(9.72)
    assert max(batch.end_s for batch in run.batch) < max(batch.end_s for batch in stepped.batch) - 1.0


def test_light_gpus_serve_the_heavy_batch_queue_with_the_heavy_model_when_colocated():
    """An idle fleet of 2 light and 2 heavy GPUs, 40 batch jobs: with colocate the light GPUs make
    heavy images too (every job's model the heavy one), and the backlog ends sooner than on the heavy
    GPUs alone."""
    trace = Trace("one", np.array([0.5]), np.array([7]))

    def run(colocate: bool):
        settings = settings_for("static", gpus=4, plan_light_gpus=2, plan_heavy_gpus=2, batch_colocate=colocate,
                                plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-medium")
        return simulate_classes(settings, trace, BatchLoad(40, 300.0))

    together, alone = run(True), run(False)
    for result in (together, alone):
        assert all(job.state == "done" and job.heavy_model == "sd35-medium" for job in result.batch)
    def batch_gpus(result) -> int:
        return len({busy.gpu for busy in result.busy if busy.priority == "batch"})

    assert (batch_gpus(together), batch_gpus(alone)) == (4, 2)  # the light GPUs too, or the heavy ones only
    assert max(job.end_s for job in together.batch) < max(job.end_s for job in alone.batch)


def test_finish_mode_runs_the_batch_on_and_the_interactive_job_misses_its_objective():
    run = one_heavy_gpu("finish")
    (job,) = run.interactive
    assert not job.within_slo
    assert not any(busy.lost for busy in run.busy)
    assert all(batch.state == "done" for batch in run.batch)


def test_gpu_seconds_count_each_class_within_the_trace():
    run = one_heavy_gpu("step")
    seconds = gpu_seconds(run.busy, 1, 10.0)
    assert seconds["fleet_gpu_s"] == 10.0
    assert seconds["interactive_gpu_s"] > 0 and seconds["batch_gpu_s"] > 0
    assert abs(seconds["interactive_idle_gpu_s"] - (10.0 - seconds["interactive_gpu_s"])) < 1e-9
    rows = class_series(run.busy, run.batch, run.placements, 1, 5.0, 20.0)
    assert len(rows) == 4 and all(0.0 <= row["idle_share"] <= 1.0 for row in rows)
    assert sum(row["batch_done"] for row in rows) == 4


def test_hadis_simulate_with_a_batch_backlog_writes_each_class_and_its_share_over_time(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "--trace", "traces/trace_1to40qps.txt", "--head", "20", "--policy", "hadis",
                  "--gpus", "8", "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(out),
                  "--batch-jobs", "40", "--batch-slo-s", "120", "--batch-yield", "finish"])
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert exit_.value.code == 0 and report["classes"]["batch"]["jobs"] == 40
    assert report["classes"]["batch_settings"] == {"jobs": 40, "at_s": 0.0, "slo_s": 120.0, "yield": "finish"}
    assert report["classes"]["interactive"]["jobs"] == report["submitted"]
    assert (out / "classes.csv").is_file() and (out / "classes.png").is_file()


def test_batch_jobs_with_a_band_are_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "--trace", "traces/trace_1to40qps.txt", "--policy", "hadis", "--gpus", "8",
                  "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(tmp_path / "x"), "--batch-jobs", "5",
                  "--band"])
    assert exit_.value.code == 2 and "--batch-jobs" in capsys.readouterr().err


def test_batch_jobs_stranded_in_a_tier_without_gpus_get_it_one_gpu_as_in_the_services():
    """The simulated controller reads the batch queues as services/controller.py reads the broker's
    (engine.observation's batch_queued): a tier left without GPUs keeps one while they drain."""
    settings = settings_for("static", gpus=4, plan_light_gpus=4, plan_heavy_gpus=0, plan_r=0.0, plan_d=0.0)
    sim = ClassSimulation(settings, Trace("one", np.array([0.5]), np.array([7])), BatchLoad(3, 900.0))
    sim.fleet.batch_queues[Tier.heavy].extend(sim.batch_jobs)
    observation = sim.observe()
    assert (observation.heavy_batch_queued, observation.light_batch_queued, observation.queued_jobs) == (3, 0, 0)
    fields = sim.schedule.step(observation, None, sim.gpus)
    assert fields is not None and (fields["light_gpus"], fields["heavy_gpus"]) == (3, 1)
