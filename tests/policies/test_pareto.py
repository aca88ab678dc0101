import csv
from itertools import pairwise
from pathlib import Path

import numpy as np
import orjson
import pytest

from shared.policies.pareto import (
    QUALITY_DIR,
    ParetoTable,
    QualityRow,
    QualityTable,
    build_table,
    cost_frontier,
    load_quality,
    load_table,
    row_cost_s,
    table_json,
)
from shared.profiles import load_profile

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "diffserve"
HYBRID_CSV = DATA / "diffserve-2" / "discriminator" / "config_results_hybrid.csv"
PAPER_TABLES = DATA / "derived" / "hadis_cascade_tables.csv"
HADIS = ("sdxl-lightning", "sd35-large-turbo", "sd35-medium", "sd35-large")
needs_data = pytest.mark.skipif(not HYBRID_CSV.exists(), reason="the team's reference data is not here")


def key(row) -> tuple:
    return (row.light_model, row.heavy_model, row.r, row.d)


def test_cost_is_expected_gpu_seconds_per_query_at_batch_one():
    profile = load_profile("paper-l40s")
    row = QualityRow(light_model="sd35-medium", heavy_model="sd35-large", r=0.2, d=0.5, fid=19.29)
    # (1 - r) * 13 s + h * 27 s with h = 0.2 + 0.8 * 0.5 = 0.6: the CSV's `latency` column, 26.6
    assert row_cost_s(profile, row) == pytest.approx(0.8 * 13 + 0.6 * 27)
    assert row_cost_s(load_profile("paper-l40s-x10"), row) == pytest.approx(2.66)


def test_cost_frontier_keeps_exact_ties_and_drops_weakly_dominated_rows():
    costs = np.array([1.0, 2.0, 2.0, 2.0, 3.0, 0.5 + 1.5])  # the last is 2.0 computed another way
    fids = np.array([30.0, 25.0, 25.0, 26.0, 24.0, 25.0])
    assert cost_frontier(costs, fids).tolist() == [True, True, True, False, True, True]


def test_every_committed_table_validates_and_is_up_to_date():
    quality = load_quality("hadis-imagenet")
    for profile_name in ("paper-l40s", "paper-l40s-x10", "h200"):
        committed = load_table(profile_name)
        assert committed.quality_table == "hadis-imagenet"
        assert table_json(build_table(quality, load_profile(profile_name))) == table_json(committed)
    assert table_json(build_table(load_quality("diffserve"), load_profile("diffserve-a100"))) == table_json(
        load_table("diffserve-a100"))


def test_table_files_parse_as_json():
    for path in QUALITY_DIR.glob("*.json"):
        data = orjson.loads(path.read_bytes())
        model = ParetoTable if path.name.endswith(".pareto.json") else QualityTable
        assert model.model_validate(data).rows


def test_pareto_rows_are_undominated_within_their_pair():
    table = load_table("paper-l40s-x10")
    for pair in table.pairs():
        frontier = [row for row in table.rows_of(pair) if row.cost_frontier]
        for row in frontier:
            assert not any(other.cost_s <= row.cost_s and other.fid <= row.fid
                           and (other.cost_s < row.cost_s or other.fid < row.fid) for other in frontier)


def test_single_model_configurations_are_in_the_table():
    table = load_table("paper-l40s-x10")
    alone = {(row.light_model if row.heavy_share == 0 else row.heavy_model, row.fid)
             for row in table.rows if row.heavy_share in (0.0, 1.0) and (row.r in (0.0, 1.0))}
    for model, fid in [("sdxl-lightning", 29.75), ("sd35-large-turbo", 25.22), ("sd35-medium", 20.61),
                       ("sd35-large", 19.95)]:
        assert (model, fid) in alone


def test_load_frontier_is_a_superset_of_the_cost_frontier():
    for profile_name in ("paper-l40s", "paper-l40s-x10", "h200", "diffserve-a100"):
        assert all(row.load_frontier for row in load_table(profile_name).rows if row.cost_frontier)


def test_profiles_without_quality_data_say_so():
    with pytest.raises(FileNotFoundError, match="no Pareto table for profile 'tiny-cpu'"):
        load_table("tiny-cpu")


@needs_data
def test_quality_table_is_the_hybrid_csv_with_model_names():
    with open(HYBRID_CSV, newline="") as handle:
        lines = list(csv.DictReader(handle))
    quality = load_quality("hadis-imagenet")
    assert len(quality.rows) == len(lines) == 726
    for line, row in zip(lines, quality.rows, strict=True):
        names = (HADIS[int(line["light_model"])], HADIS[int(line["heavy_model"])])
        assert (row.light_model, row.heavy_model) == names
        assert (row.r, row.d, row.fid) == (float(line["router_ratio"]), float(line["disc_ratio"]), float(line["fid"]))


@needs_data
def test_comparison_with_the_papers_49_rows():
    """docs/planner.md: 47 rows in common; the paper keeps two rows that cost the same as a better
    row of their pair; ours adds four exact (cost, FID) ties and two rows that only another pair beats."""
    with open(PAPER_TABLES, newline="") as handle:
        paper = {(HADIS[int(float(x["light"]))], HADIS[int(float(x["heavy"]))], float(x["router_thres"]),
                  float(x["conf_thres"])) for x in csv.DictReader(handle) if x["table"] == "hybrid"}
    adjacent = set(pairwise(HADIS))
    ours = {key(row) for row in load_table("paper-l40s").rows if row.cost_frontier and row.pair in adjacent}
    assert len(paper) == 49
    assert len(paper & ours) == 47
    turbo_medium = ("sd35-large-turbo", "sd35-medium")
    assert paper - ours == {(*turbo_medium, 0.2, 0.0), (*turbo_medium, 0.3, 0.1)}
    assert ours - paper == {(*turbo_medium, 0.0, 0.0), (*turbo_medium, 0.5, 0.3), (*turbo_medium, 0.6, 0.5),
                            (*turbo_medium, 0.7, 0.5), (*turbo_medium, 0.8, 0.3),
                            ("sd35-medium", "sd35-large", 0.0, 0.0)}
