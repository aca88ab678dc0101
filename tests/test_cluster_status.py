"""`hadis status --cluster`'s view of the service classes (shared/commands/cluster.py), as a pure
function: each class's arrivals and rate, the batch backlog by deadline with readable horizons, the
plan's batch placement, and where the per-class outcomes are (Prometheus, not the store)."""

from __future__ import annotations

from shared.cli import build_parser
from shared.commands.cluster import classes_view, horizon_label
from shared.policies.classes import BACKLOG_HORIZONS_S, Backlog
from shared.schemas import Plan


def plan(**fields) -> Plan:
    return Plan(version=3, light_model="sd35-medium", heavy_model="sd35-large", r=0.2, d=0.5, light_batch=2,
                heavy_batch=2, **fields)


def test_horizons_read_as_seconds_minutes_and_hours():
    assert [horizon_label(h) for h in BACKLOG_HORIZONS_S] == ["30s", "1m", "2m", "5m", "10m", "15m", "30m", "1h"]
    assert horizon_label(45) == "45s" and horizon_label(7200) == "2h"


def test_each_class_s_demand_the_backlog_and_the_placement():
    backlog = Backlog(BACKLOG_HORIZONS_S, (0, 0, 10, 40, 40, 4000, 4000, 4000), 5000)
    view = classes_view(plan(batch_heavy=0.25, batch_first=["gpu13", "gpu12"]), (100, 1000), (103, 5000), 2.0,
                        backlog)
    assert view["interactive"]["arrivals"] == 103 and view["interactive"]["arrivals_qps"] == 1.5
    batch = view["batch"]
    assert batch["arrivals"] == 5000 and batch["arrivals_qps"] == 2000.0
    assert batch["backlog"] == {"not_ended": 5000, "due_within": {"30s": 0, "1m": 0, "2m": 10, "5m": 40, "10m": 40,
                                                                  "15m": 4000, "30m": 4000, "1h": 4000}}
    assert batch["placement"] == {"heavy_share": 0.25, "light_share": 0.75, "reserved_gpus": 2,
                                  "reserved": ["gpu12", "gpu13"]}
    assert view["rate_window_s"] == 2.0
    assert "hadis_class_jobs_finished_total" in view["outcomes"]
    assert "hadis_class_slo_violations_total" in view["outcomes"]


def test_without_a_window_or_a_plan_counts_only():
    view = classes_view(None, (7, 2), None, 0.0, Backlog.empty())
    assert view["interactive"] == {"arrivals": 7, "arrivals_qps": None, "planned": view["interactive"]["planned"]}
    assert view["batch"]["arrivals"] == 2 and view["batch"]["placement"] is None
    assert view["batch"]["backlog"]["not_ended"] == 0 and view["rate_window_s"] is None


def test_the_rate_window_is_an_option_of_status():
    args = build_parser().parse_args(["status", "--cluster", "--rate-window", "0"])
    assert args.cluster and args.rate_window == 0.0
    assert build_parser().parse_args(["status", "--cluster"]).rate_window == 1.0
