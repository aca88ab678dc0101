"""The oracle (shared/experiments/oracle.py): its hull bounds every mix the report can credit, its
program bounds what real policies get, and every report carries its share of the oracle's gain."""

import numpy as np
import pytest

from shared.experiments.best_static import sweep
from shared.experiments.oracle import (
    Fleet,
    dearest_job_s,
    hull_fid,
    job_points,
    lower_hull,
    model_costs,
    oracle_for,
    solve,
)
from shared.experiments.report import FidLookup, build_report, gain_share
from shared.experiments.simulator import simulate
from shared.experiments.trace import Trace, load_trace
from shared.policies.pareto import heavy_share, load_quality
from shared.profiles import load_profile
from tests.helpers import make_settings

PROFILE, SLO = "paper-l40s-x10", 6.0


@pytest.fixture(scope="module")
def hull():
    return lower_hull(job_points(PROFILE, SLO, 1.0))


@pytest.fixture(scope="module")
def lookup():
    return FidLookup(load_quality("hadis-imagenet"), load_profile(PROFILE))


def steady(rate_qps: float, seconds: float) -> Trace:
    arrivals = np.arange(0.0, seconds, 1.0 / rate_qps)
    return Trace(f"steady-{rate_qps:g}", arrivals, np.arange(len(arrivals)) % 5000)


def bound(trace: Trace, gpus: int) -> float | None:
    fleet = Fleet(trace.arrival_s, trace.duration_s, SLO, gpus, SLO, dearest_job_s(PROFILE, SLO, 1.0))
    return solve(fleet, lower_hull(job_points(PROFILE, SLO, 1.0))).fid


def cost(light: str, heavy: str, r: float, d: float) -> float:
    costs = model_costs(PROFILE, SLO, 1.0)
    return (1 - r) * costs[light] + heavy_share(r, d) * costs[heavy]


def test_the_hull_is_convex_decreasing_and_below_every_row(hull):
    costs, fids = np.array([p.cost_s for p in hull]), np.array([p.fid for p in hull])
    assert np.all(np.diff(costs) > 0) and np.all(np.diff(fids) < 0)
    slopes = np.diff(fids) / np.diff(costs)
    assert np.all(np.diff(slopes) >= -1e-9)  # convex: the slopes rise
    for row in load_quality("hadis-imagenet").rows:
        assert row.fid >= hull_fid(hull, cost(row.light_model, row.heavy_model, row.r, row.d)) - 1e-9, row
    for name, model_cost in model_costs(PROFILE, SLO, 1.0).items():
        assert load_profile(PROFILE).model(name).fid >= hull_fid(hull, model_cost) - 1e-9


def test_any_mix_the_report_interpolates_lies_on_or_above_the_hull(hull, lookup):
    """The report's FID at a realised (r, d) inside a grid cell, against the cost of that mix."""
    rng = np.random.default_rng(7)
    pairs = list(lookup.grids)
    for _ in range(2000):
        light, heavy = pairs[rng.integers(len(pairs))]
        r, d = rng.uniform(0, 1, 2)
        assert lookup.fid(light, heavy, r, d) >= hull_fid(hull, cost(light, heavy, r, d)) - 1e-9


def test_a_late_escalation_is_credited_below_the_best_fid(hull, lookup):
    """Why a late job is not counted at the best FID for free (module docstring, item 4): added to
    a group served by the light model alone, one late escalation adds less than the best FID to
    the group's total FID."""
    pair, n = ("sdxl-lightning", "sd35-large-turbo"), 100
    added = (n + 1) * lookup.fid(*pair, 0.0, 1 / (n + 1)) - n * lookup.grids[pair][0, 0]
    assert added < hull[-1].fid - 0.5


def test_at_a_low_rate_the_bound_is_the_best_fid_of_the_table(hull):
    assert bound(steady(1.0, 60.0), 16) == pytest.approx(hull[-1].fid, abs=1e-6)
    assert hull[-1].fid == min(row.fid for row in load_quality("hadis-imagenet").rows)


def test_beyond_the_lightest_models_capacity_there_is_no_bound():
    lightest = min(model_costs(PROFILE, SLO, 1.0).values())
    assert bound(steady(1.5 * 2 / lightest, 60.0), 2) is None  # 1.5 x what 2 GPUs serve


def test_more_gpus_never_worsen_the_bound():
    trace = load_trace("traces/trace_1to40qps.txt").head(120)
    bounds = [bound(trace, gpus) for gpus in (2, 4, 8, 16)]
    assert bounds[0] is None or bounds[0] >= bounds[1]
    assert all(a >= b - 1e-9 for a, b in zip(bounds[1:], bounds[2:], strict=False))


def test_the_bound_is_below_what_real_policies_get(lookup):
    trace = load_trace("traces/trace_1to40qps.txt").head(120)
    settings = make_settings(profile=PROFILE, slo_s=SLO, emulated_gpus=16, backend="emulated",
                             judge_backend="emulated", plan_period_s=SLO, plan_min_dwell_s=2 * SLO,
                             demand_halflife_s=SLO, demand_margin=0.05)
    oracle = oracle_for(trace, PROFILE, SLO, 16)
    assert oracle.fid is not None
    runs = [simulate(settings.model_copy(update={"controller_policy": p}), trace)[:2] for p in ("hadis", "diffserve")]
    best = sweep(settings.model_copy(update={"controller_policy": "planned-static"}), trace, lookup, window_s=SLO)
    runs.append((best.outcomes, best.plans))
    counted = 0
    for outcomes, plans in runs:
        report, _ = build_report(outcomes, plans, lookup, policy="p", mode="simulate", trace=trace.name,
                                 profile=PROFILE, slo_s=SLO, gpus=16, window_s=SLO, duration_s=trace.duration_s,
                                 wall_s=0.0)
        if report.slo_violation_ratio <= 0.01:
            counted += 1
            assert oracle.fid <= report.mean_fid + 1e-9
    assert counted >= 2
    assert all(row.mean_fid is None or row.slo_violation_ratio > 0.01 or oracle.fid <= row.mean_fid
               for row in best.rows)


def test_oracle_gain_share():
    assert gain_share(25.0, 30.0, 20.0) == pytest.approx(0.5)
    assert gain_share(20.0, 30.0, 20.0) == pytest.approx(1.0)
    assert gain_share(31.0, 30.0, 20.0) == pytest.approx(-0.1)
    assert gain_share(None, 30.0, 20.0) is None
    assert gain_share(25.0, None, 20.0) is None
    assert gain_share(25.0, 30.0, None) is None
    assert gain_share(25.0, 20.0, 20.0) is None  # the oracle gains nothing over the lightest model
