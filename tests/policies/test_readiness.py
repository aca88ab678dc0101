"""Risk-priced structures (shared/policies/readiness.py), without the controller."""

from __future__ import annotations

import pytest

from shared.policies.bursts import BurstHistory
from shared.policies.hadis import HadisPolicy
from shared.policies.readiness import PRIOR_HALFLIFE_JOBS, Readiness
from tests.helpers import make_settings

GPUS = 16


def readiness(prior: float = 0.0, budget: float = 0.005) -> Readiness:
    policy = HadisPolicy(make_settings(controller_policy="hadis", profile="paper-l40s-x10", slo_s=6.0,
                                       demand_margin=0.05))
    return Readiness(policy.planner, 6.0, budget, prior, BurstHistory(halflife_s=180.0, memory_s=540.0))


def remember(ready: Readiness, rates: list[float]) -> None:
    arrivals = 0.0
    ready.history.observe(0.0, 0, 0.0)
    for second, rate in enumerate(rates, start=1):
        arrivals += rate
        ready.history.observe(float(second), int(round(arrivals)), 0.2)


def test_after_a_burst_out_of_silence_the_best_ready_structure_absorbs_it_and_no_better_one_does():
    ready = readiness()
    remember(ready, [0.2] * 60 + [70.0] * 4 + [0.2] * 60)
    intervals = ready.intervals(GPUS)
    best = ready.best(0.2, GPUS, intervals)
    assert best is not None and ready.risk(best, GPUS, intervals) <= ready.budget
    levels = ready.levels(intervals)
    quality = ready.expected_fid(best, GPUS, levels)
    for other in ready.layouts_for(GPUS):
        if ready.expected_fid(other, GPUS, levels) < quality - 1e-9:
            assert ready.risk(other, GPUS, intervals) > ready.budget, other
    planned = ready.planner.plan(0.2, GPUS, 6.0)
    assert planned.light_model == "sd35-medium"  # the silence's own structure would not have been ready
    assert best.light_model != "sd35-medium"


def test_without_bursts_the_quietest_structure_is_ready():
    ready = readiness()
    remember(ready, [2.0] * 120)
    intervals = ready.intervals(GPUS)
    best = ready.best(2.0, GPUS, intervals)
    assert best is not None and ready.expected_fid(best, GPUS, ready.levels(intervals)) < 19.5


def test_the_assumed_burst_fades_with_the_jobs_seen():
    ready = readiness(prior=0.2)
    remember(ready, [0.0] * 5)
    first = ready.intervals(GPUS)[0]
    top = ready.planner.plan(float("inf"), GPUS, 6.0).capacity_qps
    assert first == pytest.approx((6.0, 0.2 * top, 1.0))
    remember(ready, [10.0] * 20)  # 200 jobs: four half-lives of PRIOR_HALFLIFE_JOBS = 50
    assert ready.intervals(GPUS)[0][2] == pytest.approx(0.5 ** (200 / PRIOR_HALFLIFE_JOBS))
    assert readiness(prior=0.0).intervals(GPUS) == []


def test_a_held_structure_absorbs_a_burst_its_slack_takes_but_not_a_rise_that_lasts():
    """Readiness.absorbs: the remembered arrivals and a few seconds more a little over the
    structure's fastest point are taken by its slack; the same rate for a minute is not (a rise,
    which a structure must change for); with nothing remembered there is nothing to go on."""
    ready = readiness()
    remember(ready, [0.2] * 60 + [70.0] * 4 + [0.2] * 60)
    held = ready.best(0.2, GPUS, ready.intervals(GPUS))
    assert held is not None
    fastest = ready.capacity(held, GPUS).qps
    assert ready.absorbs(held, GPUS, 1.1 * fastest, 6.0)
    assert not ready.absorbs(held, GPUS, 1.1 * fastest, 60.0)
    assert not readiness().absorbs(held, GPUS, 1.0, 6.0)
