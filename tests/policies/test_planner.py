import itertools
import math

import numpy as np
import pytest

from shared.policies.pareto import (
    ParetoTable,
    QualityRow,
    QualityTable,
    build_table,
    load_quality,
    pareto_row,
    row_cost_s,
)
from shared.policies.planner import PlanDecision, Planner, jobs_to_shed, load_table
from shared.profiles import ModelProfile, Profile, load_profile
from shared.schemas import Plan

BATCHES = (1, 2, 4, 8)


# --- brute force: every (row, light batch, heavy batch, light GPUs, heavy GPUs) ----------------------


def shares(row, light_share: str) -> tuple[float, float]:
    light = 0.0 if row.r >= 1.0 else (1.0 - row.r if light_share == "routed" else 1.0)
    return light, row.r + (1.0 - row.r) * row.d


def brute_force(profile, rows, demand, gpus, slo, queueing, light_share, margin, batches=BATCHES):
    """All allocations of at most `gpus`, scored independently of the planner: the feasible ones
    by (FID, cost, GPUs, -capacity), and the best capacity among those within the SLO."""
    feasible, within_slo = [], []
    for row in rows:
        s_l, s_h = shares(row, light_share)
        uses_l, uses_h = s_l > 0, s_h > 0
        light, heavy = profile.model(row.light_model), profile.model(row.heavy_model)
        cost = s_l * light.batch_latency_s(1) + s_h * heavy.batch_latency_s(1)
        for b_l, b_h in itertools.product(batches if uses_l else batches[:1], batches if uses_h else batches[:1]):
            if uses_l and light.max_batch is not None and b_l > light.max_batch:
                continue
            if uses_h and heavy.max_batch is not None and b_h > heavy.max_batch:
                continue
            lat_l = light.batch_latency_s(b_l) if uses_l else 0.0
            lat_h = heavy.batch_latency_s(b_h) if uses_h else 0.0
            both_tiers = uses_l and uses_h and row.d > 0
            latency = lat_l + lat_h if both_tiers else max(lat_l, lat_h)
            if latency + queueing > slo + 1e-9:
                continue
            for g_l in range(1, gpus + 1) if uses_l else [0]:
                for g_h in range(1, gpus + 1 - g_l) if uses_h else [0]:
                    cap_l = g_l * b_l / lat_l / s_l if uses_l else math.inf
                    cap_h = g_h * b_h / lat_h / s_h if uses_h else math.inf
                    capacity = min(cap_l, cap_h)
                    within_slo.append(capacity)
                    if capacity >= demand * (1 + margin) * (1 - 1e-9):
                        feasible.append((row.fid, round(cost, 9), g_l + g_h, -capacity))
    return (min(feasible) if feasible else None), (max(within_slo) if within_slo else None)


def check_decision(profile, decision: PlanDecision, demand, gpus, slo, queueing, light_share, margin):
    """The decision is what it claims: within the GPUs and the SLO, its capacity covers the demand."""
    assert decision.light_gpus + decision.heavy_gpus <= gpus
    assert decision.expected_latency_s + queueing <= slo + 1e-9
    light = profile.model(decision.light_model)
    heavy = profile.model(decision.heavy_model)
    row = QualityRow(light_model=decision.light_model, heavy_model=decision.heavy_model, r=decision.r, d=decision.d,
                     fid=decision.fid)
    s_l, s_h = shares(row, light_share)
    caps = []
    if s_l > 0:
        assert decision.light_gpus >= 1
        caps.append(decision.light_gpus * decision.light_batch / light.batch_latency_s(decision.light_batch) / s_l)
    if s_h > 0:
        assert decision.heavy_gpus >= 1
        caps.append(decision.heavy_gpus * decision.heavy_batch / heavy.batch_latency_s(decision.heavy_batch) / s_h)
    assert decision.capacity_qps == pytest.approx(min(caps))
    assert decision.capacity_qps >= demand * (1 + margin) * (1 - 1e-9)


# --- random instances ----------------------------------------------------------------------------------


def random_profile(rng: np.random.Generator) -> Profile:
    models = {}
    for index in range(3):
        base_ms = float(rng.uniform(20, 800)) * (index + 1)
        exponent = float(rng.uniform(0.4, 1.1))
        points = {b: round(base_ms * b**exponent, 3) for b in BATCHES}
        max_batch = int(rng.choice([0, 2, 4])) or None
        models[f"m{index}"] = ModelProfile(name=f"m{index}", family="sd", steps=1, guidance=0.0, resolution=64,
                                           latency_ms=points, max_batch=max_batch)
    return Profile(name="random", models=models, default_light="m0", default_heavy="m1")


def random_quality(rng: np.random.Generator) -> QualityTable:
    grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    rows = []
    for light, heavy in [("m0", "m1"), ("m0", "m2"), ("m1", "m2")]:
        for r, d in itertools.product(grid, grid):
            if rng.random() < 0.5 or (r, d) in ((0.0, 0.0), (1.0, 0.0)):
                fid = float(np.round(rng.uniform(18, 30) * 2) / 2)  # half units: ties happen
                rows.append(QualityRow(light_model=light, heavy_model=heavy, r=r, d=d, fid=fid))
    return QualityTable(name="random", description="", source="test", models=["m0", "m1", "m2"], rows=rows)


@pytest.mark.parametrize("seed", range(60))
def test_planner_matches_brute_force_over_every_row(seed):
    """The planner searches only the Pareto table; brute force searches every row of the quality
    table: the same optimum proves both the planner and the table's pruning exact."""
    rng = np.random.default_rng(seed)
    profile, quality = random_profile(rng), random_quality(rng)
    table = build_table(quality, profile)
    light_share = "routed" if seed % 2 == 0 else "all"
    margin = float(rng.choice([0.0, 0.2]))
    planner = Planner(profile, table, light_share=light_share, margin=margin, batch_sizes=BATCHES)
    for _ in range(6):
        gpus = int(rng.integers(0, 7))
        demand = float(rng.choice([0.0, rng.uniform(0.1, 4), rng.uniform(4, 60)]))
        slo = float(rng.uniform(0.05, 8))
        queueing = float(rng.choice([0.0, rng.uniform(0, 1)]))
        decision = planner.plan(demand, gpus, slo, queueing)
        best, best_capacity = brute_force(profile, quality.rows, demand, gpus, slo, queueing, light_share, margin)
        assert decision.feasible == (best is not None)
        if best is not None:
            s_l, s_h = shares(decision, light_share)
            cost = (s_l * profile.model(decision.light_model).batch_latency_s(1)
                    + s_h * profile.model(decision.heavy_model).batch_latency_s(1))
            got = (decision.fid, round(cost, 9), decision.light_gpus + decision.heavy_gpus)
            assert got == best[:3]
            assert decision.capacity_qps == pytest.approx(-best[3])
            check_decision(profile, decision, demand, gpus, slo, queueing, light_share, margin)
        elif best_capacity is not None:
            assert decision.capacity_qps == pytest.approx(best_capacity)
            assert decision.expected_latency_s + queueing <= slo + 1e-9


def test_overload_takes_the_highest_capacity_and_never_raises():
    planner = Planner(load_profile("paper-l40s-x10"), load_table("paper-l40s-x10"))
    decision = planner.plan(10_000, 16, 6.0)
    assert not decision.feasible
    assert decision.light_model == "sdxl-lightning" and decision.heavy_share == 0.0
    assert decision.light_gpus == 16 and decision.heavy_gpus == 0
    assert decision.capacity_qps == pytest.approx(16 * 2 / 0.09)  # 22.2 qps per GPU from batch 2 up
    for demand, gpus, slo, queueing in [(5, 0, 6, 0), (5, 16, 0.01, 0), (5, 16, 6, 100), (math.nan, 16, 6, 0),
                                        (math.inf, 16, 6, 0), (-1, 16, 6, math.nan), (5, 1, 6, 0)]:
        decision = planner.plan(demand, gpus, slo, queueing)
        assert decision.light_gpus + decision.heavy_gpus <= gpus
        Plan(version=1, **decision.plan_fields())


# --- the reference profile ---------------------------------------------------------------------------------


@pytest.mark.parametrize("light_share", ["routed", "all"])
def test_paper_x10_pairs_follow_the_load(light_share):
    """16 GPUs, 6 s SLO: the authors' runs used (sd35-medium, sd35-large) at low load and
    (sdxl-lightning, sd35-large-turbo) at their highest loads."""
    planner = Planner(load_profile("paper-l40s-x10"), load_table("paper-l40s-x10"), light_share=light_share)
    low = planner.plan(1.0, 16, 6.0)
    high = planner.plan(100.0, 16, 6.0)
    assert (low.light_model, low.heavy_model) == ("sd35-medium", "sd35-large")
    assert (high.light_model, high.heavy_model) == ("sdxl-lightning", "sd35-large-turbo")
    assert low.feasible and high.feasible
    assert (low.r, low.d, low.fid) == (0.2, 0.5, 19.29)
    fids = [planner.plan(q, 16, 6.0).fid for q in (1, 5, 10, 20, 40, 100, 200)]
    assert fids == sorted(fids)  # more load never buys better quality


def test_pruned_table_plans_like_the_full_quality_table():
    profile = load_profile("paper-l40s-x10")
    quality = load_quality("hadis-imagenet")
    everything = ParetoTable(profile=profile.name, quality_table=quality.name, models=quality.models,
                             reference_batch=1, cost_formula="", source="test",
                             rows=[pareto_row(row, row_cost_s(profile, row), True, True) for row in quality.rows])
    for light_share in ("routed", "all"):
        pruned = Planner(profile, load_table(profile.name), light_share=light_share)
        full = Planner(profile, everything, light_share=light_share)
        for demand, gpus, slo in itertools.product((0.5, 2, 7, 15, 30, 60, 120), (1, 3, 8, 16), (1.5, 3.0, 6.0)):
            a, b = pruned.plan(demand, gpus, slo), full.plan(demand, gpus, slo)
            assert (a.feasible, a.fid) == (b.feasible, b.fid)
            assert a.light_gpus + a.heavy_gpus == b.light_gpus + b.heavy_gpus
            assert a.capacity_qps == pytest.approx(b.capacity_qps)


def test_pairs_restrict_the_search():
    profile = load_profile("paper-l40s-x10")
    adjacent = [("sdxl-lightning", "sd35-large-turbo"), ("sd35-large-turbo", "sd35-medium"),
                ("sd35-medium", "sd35-large")]
    planner = Planner(profile, load_table(profile.name), pairs=adjacent)
    for demand in (1, 5, 10, 20, 40, 100):
        decision = planner.plan(demand, 16, 6.0)
        assert (decision.light_model, decision.heavy_model) in adjacent
    with pytest.raises(ValueError, match="not in the table"):
        Planner(profile, load_table(profile.name), pairs=[("sd35-large", "sdxl-lightning")])


def test_max_batch_is_respected():
    planner = Planner(load_profile("paper-l40s"), load_table("paper-l40s"))
    for demand in (0.1, 0.5, 1, 2, 5, 50):
        decision = planner.plan(demand, 16, 60.0)
        for model, batch, gpus in ((decision.light_model, decision.light_batch, decision.light_gpus),
                                   (decision.heavy_model, decision.heavy_batch, decision.heavy_gpus)):
            cap = planner.profile.model(model).max_batch
            assert gpus == 0 or cap is None or batch <= cap


def test_plan_fields_make_a_plan():
    decision = Planner(load_profile("paper-l40s-x10"), load_table("paper-l40s-x10")).plan(20, 16, 6.0)
    fields = decision.plan_fields()
    assert {"version", "created_at", "assignment"}.isdisjoint(fields)
    plan = Plan(version=3, **fields)
    assert (plan.light_model, plan.r, plan.light_gpus, plan.heavy_batch) == (
        decision.light_model, decision.r, decision.light_gpus, decision.heavy_batch)
    assert plan.heavy_share == pytest.approx(decision.heavy_share)
    assert "hadis planner" in plan.reason


# --- admission control ---------------------------------------------------------------------------------


def shed_reference(deadlines, now, gpus, batch, latency):
    kept, shed = 0, []
    for index in sorted(range(len(deadlines)), key=lambda i: deadlines[i]):
        if now + (kept // (gpus * batch) + 1) * latency <= deadlines[index] + 1e-9:
            kept += 1
        else:
            shed.append(index)
    return shed


def most_on_time(deadlines, now, gpus, batch, latency):
    """The largest set whose jobs all finish in time, by enumeration."""
    for size in range(len(deadlines), -1, -1):
        for subset in itertools.combinations(sorted(deadlines), size):
            if all(now + (k // (gpus * batch) + 1) * latency <= d + 1e-9 for k, d in enumerate(subset)):
                return size
    return 0


@pytest.mark.parametrize("seed", range(40))
def test_shedding_is_edf_greedy_and_sheds_the_fewest(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(0, 9))
    deadlines = np.round(rng.uniform(-1, 6, count), 1)
    gpus, batch, latency = int(rng.integers(1, 3)), int(rng.integers(1, 3)), float(rng.choice([0.5, 1.0, 1.5]))
    shed = jobs_to_shed(deadlines, 0.0, gpus=gpus, batch=batch, batch_latency_s=latency)
    assert shed.tolist() == shed_reference(deadlines, 0.0, gpus, batch, latency)
    assert count - len(shed) == most_on_time(deadlines.tolist(), 0.0, gpus, batch, latency)
    assert list(deadlines[shed]) == sorted(deadlines[shed])


def test_shedding_large_queues_matches_the_reference():
    rng = np.random.default_rng(7)
    deadlines = 1000.0 + rng.uniform(0, 60, 5000)
    shed = jobs_to_shed(deadlines, 1000.0, gpus=4, batch=8, batch_latency_s=1.3)
    assert shed.tolist() == shed_reference(deadlines, 1000.0, 4, 8, 1.3)
    assert 0 < len(shed) < 5000
    assert jobs_to_shed(deadlines, 1000.0, gpus=0, batch=8, batch_latency_s=1.3).size == 5000
    assert jobs_to_shed(np.array([]), 0.0, gpus=1, batch=1, batch_latency_s=1.0).size == 0
