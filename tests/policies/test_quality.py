"""A job's quality on the cascade (shared/policies/quality.py), pure: the names, the forced tiers,
how forced shares combine with a plan's r and d, the rows the planner may use with them, the
router's decision for a forced job, and the simulator honouring a quality mix."""

from __future__ import annotations

import numpy as np
import pytest

from shared.experiments.simulator import Simulation
from shared.experiments.trace import Trace
from shared.policies import engine
from shared.policies.admission import HeavyRoom
from shared.policies.control import PlanSchedule, StaticPolicy
from shared.policies.engine import BatchTimes, Route
from shared.policies.hadis import HadisPolicy
from shared.policies.quality import (
    MixTracker,
    QualityMix,
    auto_point,
    fits,
    for_auto_jobs,
    forced_tier,
    normalize,
    observed_mix,
    overall_point,
    rows_for,
    settled_mix,
)
from shared.profiles import load_profile
from shared.schemas import Plan, Tier
from tests.helpers import make_settings

PROFILE = "paper-l40s-x10"


def plan(**fields) -> Plan:
    base = dict(version=1, light_model="sd35-large-turbo", heavy_model="sd35-large", r=0.3, d=0.2, light_batch=1,
                heavy_batch=1, light_gpus=2, heavy_gpus=2)
    return Plan(**{**base, **fields})


@pytest.mark.parametrize("given, expected", [(None, "auto"), ("auto", "auto"), ("low", "low"), ("medium", "medium"),
                                             ("high", "high"), ("standard", "medium"), ("hd", "high"),
                                             ("xhigh", "high"), ("max", "high")])
def test_openai_names_map_onto_the_contract(given, expected):
    assert normalize(given) == expected


@pytest.mark.parametrize("given", ["", "HIGH", "best", "ultra"])
def test_unknown_qualities_are_refused_by_name(given):
    with pytest.raises(ValueError, match="low, medium, high, auto"):
        normalize(given)


def test_only_low_and_high_force_a_tier():
    assert forced_tier("low") is Tier.light and forced_tier("high") is Tier.heavy
    assert forced_tier("auto") is None and forced_tier("medium") is None


@pytest.mark.parametrize("r, d, low, high", [(0.3, 0.2, 0.1, 0.2), (0.5, 0.4, 0.0, 0.5), (0.2, 0.0, 0.8, 0.0),
                                             (0.6, 0.5, 0.2, 0.1)])
def test_auto_point_and_overall_point_are_inverse_where_the_plan_fits(r, d, low, high):
    mix = QualityMix(low, high)
    assert fits(r, d, mix)
    r_auto, d_auto = auto_point(r, d, mix)
    assert 0 <= r_auto <= 1 and 0 <= d_auto <= 1
    assert overall_point(r_auto, d_auto, mix) == pytest.approx((r, d))


def test_the_heavy_load_is_the_planned_one():
    """The heavy tier gets r + (1 - r) d of the arrivals, forced jobs included: the plan's heavy share."""
    mix, r, d = QualityMix(low=0.2, high=0.1), 0.3, 0.25
    r_auto, d_auto = auto_point(r, d, mix)
    heavy = mix.high + mix.auto * (r_auto + (1 - r_auto) * d_auto)
    assert heavy == pytest.approx(r + (1 - r) * d)


def test_a_plan_that_does_not_fit_sends_no_auto_job_to_heavy():
    mix = QualityMix(low=0.0, high=0.5)
    assert not fits(0.2, 0.1, mix)
    assert auto_point(0.2, 0.1, mix)[0] == 0.0
    assert auto_point(0.2, 0.9, QualityMix(low=0.5)) == pytest.approx((0.4, 1.0))  # d at most 1
    assert auto_point(1.0, 0.0, QualityMix(low=0.5, high=0.5)) == (0.0, 0.0)  # no auto jobs at all


def test_the_observed_mix_rounds_up_and_stays_a_mix():
    assert observed_mix(0.0, 1.0, 1.0) == QualityMix()
    assert observed_mix(10.0, 1.0, 0.0) == QualityMix(low=0.1, high=0.0)
    assert observed_mix(10.0, 1.01, 2.2) == QualityMix(low=0.15, high=0.25)
    assert observed_mix(10.0, 8.0, 8.0).high == 0.8 and observed_mix(10.0, 8.0, 8.0).low == pytest.approx(0.2)


def test_a_planned_share_rises_at_once_and_falls_only_when_clearly_lower():
    planned = QualityMix(low=0.3, high=0.2)
    assert settled_mix(planned, QualityMix(low=0.35, high=0.1)) == QualityMix(low=0.35, high=0.2)
    assert settled_mix(planned, QualityMix(low=0.2, high=0.05)) == QualityMix(low=0.3, high=0.05)
    assert settled_mix(planned, QualityMix(low=0.15, high=0.2)) == QualityMix(low=0.15, high=0.2)
    assert settled_mix(QualityMix(low=0.6), QualityMix(low=0.55, high=0.45)) == QualityMix(low=0.55, high=0.45)


def test_the_mix_tracker_follows_the_arrivals():
    tracker = MixTracker(halflife_s=5.0, now=0.0)
    for second in range(1, 60):
        for _ in range(2):
            tracker.arrived("low")
        tracker.arrived("high")
        tracker.arrived("auto")  # not a forced quality: not counted
        tracker.update(float(second))
    assert tracker.mix(10.0) == QualityMix(low=0.2, high=0.1)


def test_rows_for_keeps_the_rows_that_fit_and_every_row_of_a_pair_none_fits():
    rows = [(("a", "b"), 0.0, 0.0), (("a", "b"), 0.3, 0.0), (("a", "b"), 0.3, 0.9), (("c", "d"), 0.1, 0.0)]
    assert rows_for(rows, QualityMix(low=0.2, high=0.3)) == [False, True, False, True]


def test_the_plan_for_auto_jobs():
    free = plan()
    assert for_auto_jobs(free) is free
    forced = for_auto_jobs(plan(r=0.4, d=0.2, low_share=0.1, high_share=0.2))
    assert (forced.r, forced.d) == pytest.approx(auto_point(0.4, 0.2, QualityMix(0.1, 0.2)))


def times() -> BatchTimes:
    return BatchTimes(load_profile(PROFILE), 1.0)


def test_forced_routes():
    now = 1000.0
    assert engine.forced_route("auto", plan(), HeavyRoom(), now, now + 60, times()) is None
    assert engine.forced_route("medium", plan(), HeavyRoom(), now, now + 60, times()) is None
    assert engine.forced_route("low", plan(light_gpus=0), HeavyRoom(), now, now + 60, times()) == Route(Tier.light,
                                                                                                        False)
    assert engine.forced_route("high", plan(), HeavyRoom(), now, now + 60, times()) == Route(Tier.heavy, False)


def test_a_high_job_is_refused_without_heavy_gpus_or_time():
    now = 1000.0
    no_gpus = engine.forced_route("high", plan(heavy_gpus=0), HeavyRoom(), now, now + 60, times())
    assert isinstance(no_gpus, str) and no_gpus.startswith("503") and "no heavy GPUs" in no_gpus
    heavy_s = times().heavy(plan())
    late = engine.forced_route("high", plan(), HeavyRoom(), now, now + heavy_s * 0.9, times())
    assert isinstance(late, str) and "cannot finish it by its deadline" in late
    # The heavy tier's backlog: one GPU clears one job every heavy_s; a queue of them fills the deadline.
    room, one = HeavyRoom(), plan(heavy_gpus=1, r=0.0, d=0.0)
    answers = [engine.forced_route("high", one, room, now, now + 5 * heavy_s, times()) for _ in range(10)]
    admitted = [answer for answer in answers if isinstance(answer, Route)]
    assert 1 <= len(admitted) < 10 and all(isinstance(answer, str) for answer in answers[len(admitted):])


def test_the_planner_leaves_room_for_the_forced_shares():
    """hadis at 2 jobs/s on 8 GPUs: a minute of the cascade alone, then 60 % of the jobs ask for
    high and 10 % for low: the plan's r holds the high jobs and its light images not escalated the
    low ones, with heavy GPUs for them."""
    settings = make_settings(controller_policy="hadis", profile=PROFILE, slo_s=10.0, emulated_gpus=8,
                             backend="emulated", judge_backend="emulated")
    schedule = PlanSchedule(HadisPolicy(settings), 1.0, 0.0)
    gpus = [f"g{i}" for i in range(8)]
    current, plans = None, {}
    for t in range(1, 120):
        mix = QualityMix() if t < 60 else QualityMix(low=0.1, high=0.6)
        fields = schedule.step(engine.observation(float(t), 2.0, 0, 0, 8, current, 2 * t, 10.0, mix), current, gpus)
        if fields is not None:
            current = Plan.model_validate({**fields, "version": t})
            plans[t] = current
    before = [plan for t, plan in plans.items() if t < 60][-1]
    after = plans[max(plans)]
    assert (before.low_share, before.high_share) == (0.0, 0.0)
    assert (after.low_share, after.high_share) == (0.1, 0.6)
    assert not fits(before.r, before.d, QualityMix(low=0.1, high=0.6))  # what it planned alone would not do
    assert fits(after.r, after.d, QualityMix(low=0.1, high=0.6)) and after.heavy_gpus > 0


def test_a_static_plan_carries_the_observed_shares():
    settings = make_settings(profile=PROFILE, plan_r=0.5, plan_d=0.0)
    schedule = PlanSchedule(StaticPolicy(settings), 1.0, 0.0)
    observation = engine.observation(1.0, 1.0, 0, 0, 2, None, 0, 10.0, QualityMix(high=0.2))
    fields = schedule.step(observation, None, ["g0", "g1"])
    assert fields is not None and fields["high_share"] == 0.2 and fields["r"] == 0.5


def steady(rate_qps: float, seconds: float) -> Trace:
    rng = np.random.default_rng(1)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_qps, int(rate_qps * seconds)))
    return Trace("steady", arrivals, rng.integers(0, 5000, len(arrivals)))


def simulation(mix: QualityMix, **overrides) -> Simulation:
    values = dict(controller_policy="static", profile=PROFILE, slo_s=30.0, emulated_gpus=4, backend="emulated",
                  judge_backend="emulated", plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large",
                  plan_light_gpus=2, plan_heavy_gpus=2, plan_r=0.2, plan_d=1.0)
    settings = make_settings(**{**values, **overrides})
    return Simulation(settings, steady(1.0, 120.0), quality_mix=mix, seed=3)


def test_the_simulator_honours_a_quality_mix():
    sim = simulation(QualityMix(low=0.3, high=0.2))
    sim.run()
    by_quality = {name: [job for job in sim.jobs if job.quality == name] for name in ("low", "high", "auto")}
    assert all(by_quality.values())
    assert len(by_quality["low"]) == pytest.approx(0.3 * len(sim.jobs), abs=0.1 * len(sim.jobs))
    # d = 1: every auto job the router leaves light is escalated (when in time); no low job is.
    assert all(not job.escalated and not job.routed_heavy and job.tier is Tier.light for job in by_quality["low"]
               if job.state == "done")
    assert any(job.escalated for job in by_quality["auto"])
    assert all(job.routed_heavy for job in by_quality["high"] if job.state == "done" and job.tier is Tier.heavy)
    assert sum(job.tier is Tier.heavy for job in by_quality["high"]) > len(by_quality["high"]) / 2
    assert sim.plan is not None and sim.plan.high_share > 0  # the controller saw the mix


def test_the_simulator_fails_high_jobs_without_heavy_gpus():
    sim = simulation(QualityMix(high=0.5), plan_light_gpus=4, plan_heavy_gpus=0, plan_d=0.0)
    sim.run()
    high = [job for job in sim.jobs if job.quality == "high"]
    assert high and all(job.state == "failed" for job in high)
    assert all(job.state == "done" for job in sim.jobs if job.quality == "auto")
