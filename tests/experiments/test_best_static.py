"""planned-static (the planner's plan for one demand, never changed), best-static (the best such plan
in hindsight) and the commands that run them and the oracle."""

import csv
import json

import pytest

from shared import cli
from shared.experiments.best_static import distinct_plans, sweep
from shared.experiments.report import FidLookup
from shared.experiments.trace import load_trace
from shared.policies.baselines import PlannedStaticPolicy
from shared.policies.catalog import COMPARED
from shared.policies.control import DECISION_FIELDS, Observation
from shared.policies.pareto import load_quality
from shared.profiles import load_profile
from tests.helpers import make_settings

PROFILE, SLO = "paper-l40s-x10", 6.0
TRACE = "traces/trace_1to40qps.txt"


def settings_for(**overrides):
    return make_settings(profile=PROFILE, slo_s=SLO, emulated_gpus=16, backend="emulated", judge_backend="emulated",
                         plan_period_s=SLO, plan_min_dwell_s=2 * SLO, demand_halflife_s=SLO, demand_margin=0.05,
                         controller_policy="planned-static", **overrides)


def observe(now: float, demand: float, gpus: int = 16) -> Observation:
    return Observation(now, demand, 0, 0.0, gpus, None)


def test_planned_static_plans_once_and_keeps_the_plan():
    policy = PlannedStaticPolicy(settings_for(static_demand_qps=20.0))
    first = policy.decide(observe(0.0, 1.0))
    assert all(policy.decide(observe(t, demand)) == first for t, demand in ((6.0, 60.0), (12.0, 0.0)))
    assert first["light_gpus"] + first["heavy_gpus"] == 16 and "20 qps" in first["reason"]
    fewer = policy.decide(observe(18.0, 1.0, gpus=8))
    assert fewer["light_gpus"] + fewer["heavy_gpus"] == 8
    assert "planned-static" not in COMPARED


def test_planned_static_needs_a_demand():
    with pytest.raises(ValueError, match="STATIC_DEMAND_QPS"):
        PlannedStaticPolicy(settings_for())


def test_the_sweep_simulates_each_plan_once():
    plans = distinct_plans(settings_for(), 16)
    keys = [tuple(plan[name] for name in DECISION_FIELDS) for _, plan in plans]
    assert len(set(keys)) == len(keys) > 5
    demands = [demand for demand, _ in plans]
    assert demands == sorted(demands) and demands[0] == 0.5


def test_best_static_is_the_best_plan_within_one_percent():
    trace = load_trace(TRACE).head(120)
    lookup = FidLookup(load_quality("hadis-imagenet"), load_profile(PROFILE))
    best = sweep(settings_for(), trace, lookup, window_s=SLO)
    chosen = next(row for row in best.rows if row.demand_qps == best.demand_qps)
    assert best.note is None and chosen.slo_violation_ratio <= 0.01 and chosen.plan == best.plan
    assert not [row for row in best.rows if row.slo_violation_ratio <= 0.01 and row.mean_fid is not None
                and row.mean_fid < chosen.mean_fid]


def simulate_command(tmp_path, policy, *extra):
    out = tmp_path / policy
    argv = ["simulate", "--trace", TRACE, "--head", "60", "--policy", policy, "--gpus", "16", "--profile", PROFILE,
            "--slo", str(SLO), "--out", str(out), *extra]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    return out, json.loads((out / "report.json").read_text())


def test_the_commands_write_the_bounds_and_every_report_its_share(tmp_path, capsys):
    oracle_dir, oracle = simulate_command(tmp_path, "oracle")
    _, best = simulate_command(tmp_path, "best-static")
    _, hadis = simulate_command(tmp_path, "hadis")
    assert oracle["policy"] == "oracle" and oracle["oracle_gain_share"] == 1.0
    assert oracle["notes"]["hull"] and oracle["notes"]["solve_s"] >= 0 and (oracle_dir / "timeseries.csv").is_file()
    for report in (best, hadis):
        assert report["oracle_fid"] == oracle["mean_fid"] and report["light_only_fid"] == 29.76
        assert report["oracle_gain_share"] == pytest.approx(
            (29.76 - report["mean_fid"]) / (29.76 - oracle["mean_fid"]))
    assert best["policy"] == "best-static" and best["notes"]["static_demand_qps"] > 0
    assert {"plan", "sweep"} <= set(best["notes"])
    with open(tmp_path / "best-static" / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(best["notes"]["sweep"]) and sum(row["chosen"] == "True" for row in rows) == 1
    assert "best-static: plan 1/" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["simulate", "--policy", "planned-static"],
    ["experiment", "--policy", "planned-static"],
    ["experiment", "--policy", "best-static"],
    ["experiment", "--policy", "oracle"],
    ["simulate", "--policy", "hadis", "--static-demand", "5"],
    ["simulate", "--policy", "oracle", "--band"],
])
def test_misused_policies_are_argument_errors(argv, tmp_path, capsys):
    common = ["--trace", TRACE, "--gpus", "16", "--profile", PROFILE, "--slo", str(SLO), "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, *common])
    assert exit_.value.code == 2 and "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
