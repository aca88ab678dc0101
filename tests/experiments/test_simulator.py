import numpy as np
import pytest

from shared.experiments.simulator import Simulation, simulate
from shared.experiments.trace import Trace
from shared.schemas import Plan, Tier
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
    assert all(worker.tier is not None for worker in simulation.fleet.workers.values())


@pytest.mark.parametrize("policy", ["hadis-paper", "diffserve", "proteus", "infaas-acc", "clipper-light"])
def test_the_baselines_run_in_the_simulator(policy):
    outcomes, _, _ = simulate(settings_for(policy), steady(10.0, 30.0))
    assert not [job for job in outcomes if job.state == "lost"]


def static_eight():
    """A static plan of 4 light and 4 heavy GPUs; the settings price a start at 3 s + 1.25 s per other."""
    return settings_for("static", gpus=8, worker_start_s=3.0, worker_start_each_s=1.25, plan_light_gpus=4,
                        plan_heavy_gpus=4)


def move_every_gpu_at_10_s(simulation: Simulation) -> dict:
    """The first plan at 0 s, then every GPU moved to the other tier at 10 s; the new assignment."""
    simulation.now = 0.0
    simulation.control()
    first = simulation.in_force
    simulation.now = 10.0
    moved = {gpu: (Tier.heavy if tier is Tier.light else Tier.light) for gpu, tier in first.assignment.items()}
    simulation.plan = Plan.model_validate({**first.model_dump(), "version": 2, "assignment": moved})
    simulation.fleet.reconcile(first)
    return moved


def test_workers_started_at_once_share_the_host_and_a_model_swap_in_place_takes_its_load():
    """Eight GPUs moved to the other tier at once: each new worker is ready after 3 s + 7 x 1.25 s
    (the measured growth); a tier whose model changes in place loads it (a profiled 4 s here)."""
    simulation = Simulation(static_eight(), steady(1.0, 5.0))
    moved = move_every_gpu_at_10_s(simulation)
    assert len(moved) == 8
    assert {round(worker.ready_at, 2) for worker in simulation.fleet.workers.values()} == {10.0 + 3.0 + 7 * 1.25}
    simulation.now = 30.0
    simulation.profile = simulation.profile.model_copy(deep=True)  # load_profile's is shared (cached)
    object.__setattr__(simulation.profile.model("sd35-large"), "load_s", 4.0)
    swapped = simulation.in_force.model_copy(update={"version": 3, "heavy_model": "sd35-large"})
    before, simulation.plan = simulation.plan, swapped
    simulation.fleet.reconcile(before)
    heavy = [w for w in simulation.fleet.workers.values() if w.tier is Tier.heavy]
    light = [w for w in simulation.fleet.workers.values() if w.tier is Tier.light]
    assert before.heavy_model != "sd35-large"
    assert heavy and all(w.ready_at == pytest.approx(34.0) for w in heavy)
    assert all(w.ready_at < 30.0 for w in light)


def test_a_switch_under_load_keeps_every_window_under_the_target():
    """Demand steps from 6 to 20 jobs/s: hadis moves GPUs between its tiers (two at a time) while
    the jobs keep coming; no 6-second window has more than 20 % of its jobs late or dropped
    (issue 19's target), and the whole run under 2 %. The step is a burst the structure for 6
    jobs/s cannot ride out (HadisPolicy.outrun): the structure is chosen for the arriving rate at
    once. Chosen for the sustained demand, which takes a hold to follow, sd35-medium ->
    sd35-large stayed 7 s into the step and the worst window missed 24 %."""
    rng = np.random.default_rng(3)
    before = np.cumsum(rng.exponential(1 / 6.0, 6 * 90))
    after = before[-1] + np.cumsum(rng.exponential(1 / 20.0, 20 * 90))
    arrivals = np.concatenate([before, after])
    trace = Trace("step", arrivals, rng.integers(0, 5000, len(arrivals)))
    outcomes, plans, _ = simulate(settings_for("hadis"), trace)
    assert len({(plan.light_gpus, plan.heavy_gpus) for plan in plans if plan.t_s > 90}) >= 2  # GPUs moved
    arrived = np.array([job.arrival_s for job in outcomes])
    bad = np.array([job.state != "done" or job.latency_s > 6.0 for job in outcomes])
    windows = [bad[(arrived >= start) & (arrived < start + 6)].mean() for start in range(0, int(arrived[-1]) - 6, 6)]
    assert max(windows) <= 0.20, max(windows)
    assert bad.mean() < 0.02


def test_an_offset_moves_the_planning_instants_before_the_trace_and_zero_changes_nothing():
    """The controller of an experiment runs a while before the trace begins (its first workers
    start), so its plan period's phase is chance: the simulator's offset is that while."""
    trace = steady(8.0, 60.0)
    nominal, nominal_plans, _ = simulate(settings_for("hadis"), trace)
    zero, zero_plans, _ = simulate(settings_for("hadis"), trace, offset_s=0.0)
    assert zero == nominal and zero_plans == nominal_plans
    shifted, plans, _ = simulate(settings_for("hadis"), trace, offset_s=2.5)
    assert plans[0].t_s == -2.5
    assert len(shifted) == len(trace) and all(job.state in ("done", "expired") for job in shifted)
    # Plans come on the controller's 1 s ticks, counted from its own start.
    assert all(abs((plan.t_s + 2.5) - round(plan.t_s + 2.5)) < 1e-9 for plan in plans)


def test_the_start_times_of_the_simulated_host_are_its_own_and_not_the_policys():
    """The band varies what a start takes on the simulated host (worker_start_each_s); the
    policy goes on pricing switches with the settings' figures, as the services' controller does."""
    simulation = Simulation(static_eight(), steady(1.0, 5.0), worker_start_s=2.5, worker_start_each_s=1.4)
    move_every_gpu_at_10_s(simulation)
    assert {round(worker.ready_at, 2) for worker in simulation.fleet.workers.values()} == {22.3}  # 10 + 2.5 + 7 x 1.4
    assert simulation.settings.worker_start_each_s == 1.25


@pytest.mark.parametrize("seed", [5, 11])
def test_bursts_out_of_silence_are_met_by_a_structure_ready_for_them(seed):
    """On/off arrivals (near silence, then 25x the mean within a second): hadis holds a structure
    whose fastest operating point absorbs the bursts it remembers (and, before any, the one it
    assumes), and misses at most 1 % of the jobs. Without the burst risk (plan_risk 1, no assumed
    burst) it plans for the silence and the bursts miss their deadlines: the test fails without it.
    (Seed 4, used before, brings 106 jobs in 300 s, one short burst at the end: since a burst that
    outruns the structure is planned for at once, the blind run misses none of them.)"""
    from shared.experiments.bursty import on_off

    trace = on_off(mean_qps=3.0, peak_to_mean=25.0, off_s=60.0, duration_s=300.0, seed=seed)
    ready, _, _ = simulate(settings_for("hadis"), trace)
    blind, _, _ = simulate(settings_for("hadis", plan_risk=1.0, burst_prior=0.0), trace)

    def violations(outcomes) -> float:
        return float(np.mean([not job.within_slo for job in outcomes]))

    assert violations(ready) <= 0.01, violations(ready)
    assert violations(blind) > 0.05, violations(blind)


def test_a_burst_the_held_structure_rides_out_does_not_swap_the_fleet_to_the_fastest_pair():
    """A burst out of silence that lasts seconds at 15x the mean: the sustained estimate sees a step
    it extrapolates (and a rate over the held structure's fastest point), but the structure held for
    the bursts absorbs it in its slack, so the fleet keeps its pair; before, it swapped every GPU to
    sdxl-lightning inside the burst and served the burst's jobs at FID ~29.8 (without hadis.absorbed
    it still swaps here, three times). At 20x the mean the queue outgrows what the structure's slack
    takes for a lead more at the burst's rate (Readiness.absorbs counts the jobs queued), and the
    fleet swaps, though that burst ended in time: a conservative rule, 0.24 FID on that trace."""
    from shared.experiments.bursty import on_off

    trace = on_off(mean_qps=3.5, peak_to_mean=15.0, off_s=120.0, duration_s=300.0, seed=8)
    outcomes, plans, _ = simulate(settings_for("hadis"), trace)
    assert not [plan for plan in plans if "lightning" in plan.light_model + plan.heavy_model], plans
    assert np.mean([not job.within_slo for job in outcomes]) <= 0.01


def test_a_burst_out_of_silence_routes_nothing_before_the_controller_sees_it(monkeypatch):
    """The plan in force when a burst lands was made for the silence (r 0.8: the heavy tier is idle).
    Before the controller's next tick, the router would send 80 % of the burst's first second
    to the heavy tier, where those jobs take the places of the escalations of the burst's worst
    images. Held against the plan's burst guard, the burst's first second takes the light path once
    the guard trips; with the guard off (beyond_pace never true) it goes heavy: the test fails
    without the guard."""
    from shared.experiments.bursty import on_off
    from shared.policies import engine

    trace = on_off(mean_qps=3.5, peak_to_mean=20.0, off_s=120.0, duration_s=300.0, seed=8)

    def onset_routed(outcomes) -> int:
        """Jobs routed heavy among those arriving in the first second of a burst (after 20 s with
        fewer than 20 arrivals)."""
        times = np.array(sorted(job.arrival_s for job in outcomes))
        starts = [t for i, t in enumerate(times) if np.sum((times >= t - 20.0) & (times < t)) < 20
                  and np.sum((times >= t) & (times < t + 1.0)) >= 20]
        return sum(job.routed_heavy for job in outcomes if any(s <= job.arrival_s < s + 1.0 for s in starts))

    guarded, _, _ = simulate(settings_for("hadis"), trace)
    monkeypatch.setattr(engine, "beyond_pace", lambda arrived, burst_qps: False)
    unguarded, _, _ = simulate(settings_for("hadis"), trace)
    # The guard trips once a second's count is 3 Poisson deviations past it (the 7th job at 2 jobs/s):
    # a few jobs of each of the three bursts go heavy first (15 here, 91 unguarded).
    assert onset_routed(guarded) <= 25, onset_routed(guarded)
    assert onset_routed(unguarded) >= 3 * onset_routed(guarded), (onset_routed(unguarded), onset_routed(guarded))
    assert np.mean([not job.within_slo for job in guarded]) <= 0.01


def test_a_plan_published_for_its_burst_guard_alone_is_no_plan_event():
    """The guard follows the demand and is republished past a drift (control.same_guard); the plan
    log (plans.csv, the report's plan_changes) records changes of the interactive fields only, as
    the services' runner does (report.interactive_fields)."""
    simulation = Simulation(static_eight(), steady(1.0, 5.0))
    simulation.now = 0.0
    simulation.control()
    fields = simulation.in_force.model_dump(exclude={"version", "created_at"})
    simulation.now = 3.0
    simulation.publish({**fields, "burst_qps": 8.0})
    assert len(simulation.plans) == 1 and simulation.in_force.burst_qps == 8.0
    simulation.publish({**fields, "burst_qps": 8.0, "r": 0.3, "reason": "a test's reason"})
    assert len(simulation.plans) == 2 and simulation.plans[-1].r == 0.3
    assert simulation.plans[-1].reason == "a test's reason"  # plans.csv says why the plan changed
