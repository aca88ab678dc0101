import json

import pytest

from shared.experiments.plots import load_run, plot_comparison, plot_run

COLUMNS = ("t_s,demand_qps,completed,within_slo,late,dropped,failed,violation_ratio,heavy_share,"
           "fid,light_model,heavy_model,r,d,light_gpus,heavy_gpus").split(",")


def make_run(folder, policy, mean_fid=18.5, p99=3.2):
    folder.mkdir(parents=True)
    report = {"policy": policy, "mode": "simulate", "trace": "trace_1to40qps", "profile": "a100",
              "slo_s": 5.0, "gpus": 8, "submitted": 120, "completed": 110, "within_slo": 100,
              "late": 10, "dropped": 6, "failed": 0, "lost": 4, "slo_violation_ratio": 0.1379,
              "mean_fid": mean_fid, "p50_latency_s": 1.1, "p99_latency_s": p99,
              "heavy_share": 0.4, "window_s": 10.0, "extra": "ignored"}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "timeseries.csv").write_text(",".join(COLUMNS) + "\n" + "\n".join([
        "0,1.0,10,10,0,0,0,0.0,0.5,17.2,sd-turbo,sdxl,0.5,0.1,4,4",
        "10,5.5,0,0,0,0,0,,,,sd-turbo,sdxl,0.5,0.1,4,4",
        "20,20.0,50,40,8,2,0,0.2,0.3,19.8,sd-turbo,sdxl,0.3,0.2,5,3",
        "30,40.0,50,50,2,4,0,0.1071,0.2,21.0,sd-turbo,sdxl,0.2,0.2,6,2",
    ]) + "\n")
    return folder


def is_png(path):
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def parent(tmp_path):
    parent = tmp_path / "trace_1to40qps"
    make_run(parent / "zeta", "zeta-policy")
    make_run(parent / "diffserve", "diffserve", mean_fid=None, p99=None)
    make_run(parent / "hadis", "hadis", mean_fid=16.0, p99=2.5)
    (parent / "notes").mkdir()
    (parent / "notes" / "timeseries.csv").write_text(",".join(COLUMNS) + "\n")
    return parent


def test_load_run_converts_numbers_and_empty_cells(parent):
    report, rows = load_run(parent / "hadis")
    assert report["policy"] == "hadis"
    assert rows[0]["t_s"] == 0.0 and rows[0]["fid"] == 17.2
    assert rows[1]["fid"] is None and rows[1]["violation_ratio"] is None
    assert rows[0]["light_model"] == "sd-turbo"


def test_plot_run_writes_png(parent):
    path = plot_run(parent / "hadis")
    assert path == parent / "hadis" / "timeline.png"
    assert is_png(path)


def test_plot_comparison_writes_figures_and_table(parent):
    paths = plot_comparison(parent)
    assert set(paths) == {parent / "comparison_timeline.png", parent / "comparison_bars.png",
                          parent / "comparison_front.png", parent / "comparison.md"}
    assert is_png(parent / "comparison_timeline.png")
    assert is_png(parent / "comparison_bars.png")
    assert is_png(parent / "comparison_front.png")

    lines = (parent / "comparison.md").read_text().splitlines()
    assert lines[0].split("|")[1].strip() == "policy"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in rows] == ["hadis", "diffserve", "zeta-policy"]
    hadis, diffserve, _ = rows
    assert hadis[1:] == ["13.79%", "20.00%", "16.00", "–", "2.50", "0.40", "120", "4"]  # worst window: t = 20 s
    assert diffserve[3] == "–" and diffserve[4] == "–"


def test_plot_comparison_needs_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        plot_comparison(tmp_path)


def test_differences_table_subtracts_per_policy(parent, tmp_path):
    from shared.experiments.plots import differences_table

    path = differences_table(parent, parent)
    rows = path.read_text().splitlines()[2:]
    assert rows[0].startswith("| hadis |") and "| 0.00 |" in rows[0]
    assert path == parent / "differences.md"
