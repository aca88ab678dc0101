import csv
import sys

import orjson
import pytest

from shared.experiments.report import FidLookup, JobOutcome, PlanEvent, build_report, write_run
from shared.policies.pareto import load_quality
from shared.profiles import load_profile

PAIR = ("sd35-medium", "sd35-large")


@pytest.fixture(scope="module")
def lookup():
    return FidLookup(load_quality("hadis-imagenet"), load_profile("paper-l40s-x10"))


def measured(light, heavy, r, d):
    for row in load_quality("hadis-imagenet").rows:
        if (row.light_model, row.heavy_model, row.r, row.d) == (light, heavy, r, d):
            return row.fid
    raise KeyError


def test_fid_is_the_measured_row_at_grid_points_and_interpolated_between(lookup):
    assert lookup.fid(*PAIR, 0.2, 0.5) == pytest.approx(measured(*PAIR, 0.2, 0.5))
    between = lookup.fid(*PAIR, 0.25, 0.5)
    assert between == pytest.approx((measured(*PAIR, 0.2, 0.5) + measured(*PAIR, 0.3, 0.5)) / 2)
    assert lookup.fid("sd35-large", "sd35-large", 1.0, 0.0) == 19.95  # a single model: its own FID
    with pytest.raises(ValueError, match="no pair"):
        lookup.fid("sd35-large", "sdxl-lightning", 0.5, 0.5)


def job(arrival, state, latency=None, tier="light", routed=False, escalated=False, pair=PAIR):
    return JobOutcome(arrival_s=arrival, state=state, end_s=None if latency is None else arrival + latency, slo_s=6.0,
                      light_model=pair[0], heavy_model=pair[1], tier=tier, routed_heavy=routed, escalated=escalated)


def test_the_report_counts_every_job_once_and_looks_up_the_realised_mix(lookup):
    outcomes = ([job(0.5, "done", 1.0) for _ in range(6)] + [job(1.0, "done", 3.0, tier="heavy", routed=True)]
                + [job(1.5, "done", 4.0, tier="heavy", escalated=True)] + [job(2.0, "done", 7.0)]
                + [job(2.5, "expired", 2.0), job(3.0, "failed", 1.0), job(3.5, "lost")])
    plans = [PlanEvent(0.0, *PAIR, 0.1, 0.1, 2, 2)]
    report, series = build_report(outcomes, plans, lookup, policy="hadis", mode="simulate", trace="t",
                                  profile="paper-l40s-x10", slo_s=6.0, gpus=4, window_s=6.0, duration_s=4.0,
                                  wall_s=0.1)
    assert (report.submitted, report.completed, report.within_slo, report.late) == (12, 9, 8, 1)
    assert (report.dropped, report.failed, report.lost) == (1, 1, 1)
    assert report.slo_violation_ratio == pytest.approx(4 / 12)
    # realised: 1 of 9 routed to heavy, 1 of the 8 on the light path escalated
    assert report.mean_fid == pytest.approx(lookup.fid(*PAIR, 1 / 9, 1 / 8))
    assert report.heavy_share == pytest.approx(2 / 9)
    assert sum(row["completed"] for row in series) == 9
    assert sum(row["dropped"] + row["failed"] for row in series) == 3  # the lost job counts as failed


def test_single_model_runs_have_no_heavy_share(lookup):
    solo = ("sdxl-lightning", "sdxl-lightning")
    report, _ = build_report([job(0.1, "done", 0.1, tier="heavy", routed=True, pair=solo)], [], lookup,
                             policy="clipper-light", mode="simulate", trace="t", profile="paper-l40s-x10", slo_s=6.0,
                             gpus=1, window_s=6.0, duration_s=1.0, wall_s=0.0)
    assert report.heavy_share is None and report.mean_fid == 29.76
    assert report.model_shares == {"sdxl-lightning": 1.0}


def test_a_run_folder_holds_the_report_the_series_the_plans_and_a_figure(lookup, tmp_path):
    plans = [PlanEvent(0.0, *PAIR, 0.2, 0.5, 1, 1)]
    report, series = build_report([job(0.1, "done", 1.0), job(7.0, "expired", 3.0)], plans, lookup, policy="hadis",
                                  mode="experiment", trace="t", profile="paper-l40s-x10", slo_s=6.0, gpus=2,
                                  window_s=6.0, duration_s=12.0, wall_s=1.0)
    paths = write_run(tmp_path / "run", report, series, plans)
    assert orjson.loads(paths[0].read_bytes())["submitted"] == 2
    rows = list(csv.DictReader(paths[1].open()))
    assert [row["completed"] for row in rows] == ["1", "0"] and rows[1]["fid"] == ""
    assert paths[3].read_bytes().startswith(b"\x89PNG")


def test_without_matplotlib_a_run_folder_has_no_figure(lookup, tmp_path, monkeypatch):
    # The base install (no `experiments` extra) still simulates and writes the report.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "shared.experiments.plots", raising=False)
    plans = [PlanEvent(0.0, *PAIR, 0.2, 0.5, 1, 1, "hadis planner: r=0.2, d=0.5; kept")]
    report, series = build_report([job(0.1, "done", 1.0)], plans, lookup, policy="hadis", mode="simulate",
                                  trace="t", profile="paper-l40s-x10", slo_s=6.0, gpus=1, window_s=6.0,
                                  duration_s=6.0, wall_s=0.0)
    paths = write_run(tmp_path / "run", report, series, plans)
    assert [path.name for path in paths] == ["report.json", "timeseries.csv", "plans.csv"]
    assert not (tmp_path / "run" / "timeline.png").exists()
    with open(tmp_path / "run" / "plans.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["reason"] == "hadis planner: r=0.2, d=0.5; kept"  # a reason's commas stay in its cell
