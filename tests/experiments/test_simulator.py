import numpy as np
import pytest

from shared.experiments.simulator import Simulation, simulate
from shared.experiments.trace import Trace
from tests.helpers import make_settings


def steady(rate_qps: float, seconds: float, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_qps, int(rate_qps * seconds)))
    return Trace("steady", arrivals, rng.integers(0, 5000, len(arrivals)))


def settings_for(policy: str, gpus: int = 16, **overrides):
    return make_settings(controller_policy=policy, profile="paper-l40s-x10", slo_s=6.0, emulated_gpus=gpus,
                         backend="emulated", judge_backend="emulated", plan_period_s=5.0, plan_min_dwell_s=10.0,
                         **overrides)


def test_every_job_ends_and_a_run_is_reproducible():
    trace = steady(8.0, 60.0)
    first, plans, _ = simulate(settings_for("hadis"), trace)
    second, _, _ = simulate(settings_for("hadis"), trace)
    assert len(first) == len(trace) and all(job.state in ("done", "expired") for job in first)
    assert first == second
    assert plans and plans[0].t_s == 0.0


def test_an_easy_load_is_served_within_the_slo_and_the_cascade_is_used():
    outcomes, plans, _ = simulate(settings_for("hadis"), steady(2.0, 60.0))
    assert all(job.state == "done" and job.latency_s <= 6.0 for job in outcomes)
    assert any(job.escalated for job in outcomes) or any(job.routed_heavy for job in outcomes)


def test_overload_is_shed_by_deadline_and_nothing_is_late_or_lost():
    outcomes, _, _ = simulate(settings_for("clipper-heavy", gpus=2), steady(10.0, 30.0))
    states = [job.state for job in outcomes]
    assert states.count("expired") > len(outcomes) / 2
    assert all(job.latency_s <= 6.0 for job in outcomes if job.state == "done")


def test_gpus_moved_between_tiers_restart_their_workers():
    simulation = Simulation(settings_for("hadis", gpus=8), steady(4.0, 20.0).scaled(4), worker_start_s=2.0)
    simulation.run()
    assert len(simulation.plans) >= 2
    assert all(worker.tier is not None for worker in simulation.workers.values())


@pytest.mark.parametrize("policy", ["hadis-paper", "diffserve", "proteus", "infaas-acc", "clipper-light"])
def test_the_baselines_run_in_the_simulator(policy):
    outcomes, _, _ = simulate(settings_for(policy), steady(10.0, 30.0))
    assert not [job for job in outcomes if job.state == "lost"]
