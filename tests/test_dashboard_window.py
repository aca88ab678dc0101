"""The dashboard's pure parts (shared/dashboard/): the windowed aggregates, the event fold, the GPU grid,
the plan's changes and their switch costs."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from shared.dashboard import feed, fleet
from shared.dashboard.window import (
    ALL,
    MAX_TENANTS,
    OTHER,
    Finished,
    Stats,
    Window,
    groups,
    latency_bin,
    overall,
    percentile,
    series,
)
from shared.schemas import Plan

T0 = 1_700_000_000.0  # a bucket boundary (divisible by 2)


PAIR = ("light-m", "heavy-m")


def job(at: float, latency: float | None = 1.0, *, state: str = "done", tenant: str = "acme", slo: float = 5.0,
        tier: str = "light", escalated: bool = False, pair: tuple[str, str] | None = PAIR) -> Finished:
    return Finished(at=at, state=state, tenant=tenant, slo_s=slo, latency_s=latency, tier=tier, escalated=escalated,
                    pair=pair)


def test_percentiles_from_the_histogram_are_within_half_a_bin():
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=0.0, sigma=1.2, size=5000)
    stats = Stats()
    for latency in latencies:
        stats.add(job(T0, float(latency)))
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(latencies, q))
        assert percentile(stats.hist, q) == pytest.approx(exact, rel=0.05)
    assert percentile(Stats().hist, 0.5) is None
    assert latency_bin(0.0) == 0 and latency_bin(1e9) == len(stats.hist) - 1


def test_attainment_counts_late_expired_and_failed_as_misses():
    window = Window()
    for latency in (1.0, 2.0, 4.0):
        window.finished(job(T0 + 0.5, latency))
    window.finished(job(T0 + 0.5, 6.0))  # done, but after its 5 s objective
    window.finished(job(T0 + 0.5, None, state="expired"))
    window.finished(job(T0 + 0.5, None, state="failed"))
    total = window.totals(T0 + 10)[ALL].summary(None)
    assert (total["ended"], total["done"], total["within_slo"], total["late"]) == (6, 4, 3, 1)
    assert (total["expired"], total["failed"]) == (1, 1)
    assert total["attainment"] == pytest.approx(3 / 6)
    assert total["p50_s"] == pytest.approx(2.0, rel=0.05) and total["p99_s"] == pytest.approx(6.0, rel=0.05)


def test_groups_per_tenant_and_latency_class():
    window = Window()
    window.finished(job(T0, 1.0, tenant="a", slo=5.0))
    window.finished(job(T0, 1.0, tenant="a", slo=5.0))
    window.finished(job(T0, 9.0, tenant="b", slo=30.0))
    totals = window.totals(T0 + 10)
    tenants = {row["name"]: row for row in groups(totals, "tenant", None)}
    assert tenants["a"]["ended"] == 2 and tenants["b"]["ended"] == 1
    assert [row["name"] for row in groups(totals, "tenant", None)] == ["a", "b"]  # the busiest first
    classes = {row["name"]: row["ended"] for row in groups(totals, "class", None)}
    assert classes == {"5s": 2, "30s": 1}


def test_a_bucket_counts_so_many_tenants_by_name_the_rest_as_other():
    window = Window()
    for index in range(MAX_TENANTS + 8):
        window.finished(job(T0, tenant=f"t{index}"))
    names = [row["name"] for row in groups(window.totals(T0 + 10), "tenant", None)]
    assert len(names) == MAX_TENANTS + 1 and OTHER in names
    assert sum(row["ended"] for row in groups(window.totals(T0 + 10), "tenant", None)) == MAX_TENANTS + 8


def test_the_window_forgets_old_buckets_and_drops_what_is_older():
    window = Window(bucket_s=2.0, span_s=20.0)
    for second in range(0, 200, 1):
        window.arrived(T0 + second)
        window.finished(job(T0 + second))
    assert len(window.buckets) <= window.count  # bounded, whatever ran through it
    window.finished(job(T0 + 100))  # older than the window now: dropped, not counted
    totals = window.totals(T0 + 200)
    assert totals[ALL].ended == (window.count - 1) * 2  # the complete buckets' jobs, 2 a bucket
    assert window.covered_s(T0 + 200) == (window.count - 1) * 2.0  # all of it holds data


def test_series_has_one_point_per_complete_bucket_with_gaps_as_none():
    window = Window(bucket_s=2.0, span_s=10.0)
    window.arrived(T0 + 0.1, jobs=4)
    window.arrived(T0 + 0.2, "light", jobs=3)
    window.arrived(T0 + 0.3, "heavy")
    window.sampled(T0 + 0.5, {"light": 7, "heavy": 2}, r=0.2, d=0.3)
    window.judged(T0 + 0.5, escalated=True)
    window.judged(T0 + 0.6, escalated=False)
    window.finished(job(T0 + 1.0, 1.0))
    window.arrived(T0 + 4.5)  # the bucket of `now`: still filling, not a point yet
    points = series(window, T0 + 4.5, None)
    assert points["t"] == [-6.5, -4.5, -2.5, -0.5]
    assert points["arrivals"][-2:] == [2.0, 0.0]  # 4 jobs in 2 s
    assert points["arrivals_light"][-2] == 1.5 and points["arrivals_heavy"][-2] == 0.5
    assert points["depth_light"][-2:] == [7, None] and points["d"][-2] == 0.3
    assert points["escalation"][-2:] == [0.5, None]
    assert points["attainment"][-2:] == [1.0, None] and points["p50_s"][-2] == pytest.approx(1.0, rel=0.05)


class Table:
    """A stand-in quality table: FID = 20 - 10 r - 5 d, per pair."""

    def fid(self, light: str, heavy: str, r: float, d: float) -> float:
        if (light, heavy) != ("light-m", "heavy-m"):
            raise ValueError("no such pair")
        return 20.0 - 10.0 * r - 5.0 * d


def test_fid_is_the_tables_at_the_realised_r_and_d_never_a_mean_of_images():
    stats = Stats()
    stats.add(job(T0, tier="heavy"))  # routed straight to heavy
    stats.add(job(T0, tier="heavy", escalated=True))
    stats.add(job(T0, tier="light"))
    stats.add(job(T0, tier="light"))
    stats.add(job(T0, pair=("other", "pair")))  # a pair the table lacks: left out
    # r = 1/4 routed; d = 1/3 of the light path escalated
    assert stats.fid(Table()) == pytest.approx(20 - 10 * 0.25 - 5 / 3)
    assert stats.fid(None) is None
    totals = {ALL: stats}
    assert groups(totals, "tenant", Table()) == []


def event(job_id: str, state: str, at: float, tier: str = "") -> tuple[str, dict[str, str]]:
    transition = orjson.dumps({"state": state, "at": at, "detail": ""}).decode()
    return f"{int(at * 1000)}-0", {"job_id": job_id, "state": state, "transition": transition, "tier": tier}


def test_the_fold_counts_arrivals_per_tier_and_the_judges_verdicts():
    window = Window()
    fold = feed.Fold(window)
    ended = fold.events([
        event("a", "queued", T0), event("a", "routed", T0, "light"), event("a", "generating", T0 + 0.1, "light"),
        event("a", "judging", T0 + 0.2, "light"), event("a", "escalated", T0 + 0.3, "heavy"),
        event("a", "generating", T0 + 0.4, "heavy"), event("a", "done", T0 + 0.9, "heavy"),
        event("b", "queued", T0), event("b", "routed", T0, "light"), event("b", "judging", T0 + 0.2, "light"),
        event("b", "done", T0 + 0.5, "light"),
        event("c", "queued", T0), event("c", "routed", T0, "heavy"), event("c", "expired", T0 + 1.5, "heavy"),
        ("0-1", {"job_id": "d", "state": "queued", "transition": "not json"}),  # unreadable: skipped
    ])
    assert [(e.job_id, e.state) for e in ended] == [("a", "done"), ("b", "done"), ("c", "expired")]
    bucket = window.buckets[int(T0 // window.bucket_s)]
    assert bucket.arrivals == {ALL: 3, "light": 2, "heavy": 2}  # c routed heavy, a escalated to it
    assert (bucket.judged, bucket.escalated) == (2, 1)
    assert not fold.judging


def test_an_ended_job_is_counted_from_its_record():
    ended = feed.Ended("a", "done", T0 + 3.0, "light")
    fields = {"tenant": "acme", "submitted_at": repr(T0), "deadline": repr(T0 + 5.0), "plan_version": "4",
              "escalated": "1", "tier": "heavy"}
    counted = feed.finished(ended, fields, {4: ("l", "h")})
    assert counted == Finished(T0 + 3.0, "done", "acme", 5.0, 3.0, "heavy", True, ("l", "h"))
    assert counted.within_slo and counted.latency_class == "5s"
    gone = feed.finished(ended, {}, {})
    assert (gone.tenant, gone.latency_s, gone.pair, gone.tier) == ("", None, None, "light")


def test_recent_jobs_keep_the_newest_with_their_steps():
    recent = feed.Recent(bound=2)
    for index in range(3):
        ended = feed.Ended(f"j{index}", "done", T0 + index + 1, "light")
        history = [{"state": "queued", "at": T0 + index}, {"state": "done", "at": T0 + index + 1}]
        recent.add(ended, {"submitted_at": repr(T0 + index), "deadline": repr(T0 + index + 5)}, history)
    view = recent.view()
    assert [job["job_id"] for job in view] == ["j2", "j1"]
    assert view[0]["latency_s"] == pytest.approx(1.0) and view[0]["slo_s"] == pytest.approx(5.0)
    assert [step["t_s"] for step in view[0]["steps"]] == [0.0, 1.0]
    batch = [feed.Ended(str(i), "done", T0, "") for i in range(5)]
    assert [job.job_id for job in recent.newest(batch, 100.0)] == ["3", "4"]
    assert recent.newest(batch, 100.0 + feed.RECENT_EVERY_S / 2) == []  # listed at most every RECENT_EVERY_S
    assert len(recent.newest(batch, 100.0 + feed.RECENT_EVERY_S)) == 2 and recent.newest([], 1e9) == []


def plan(version: int, assignment: dict[str, str], **fields) -> Plan:
    base = dict(light_model="l1", heavy_model="h1", r=0.2, d=0.3, light_batch=4, heavy_batch=2,
                light_gpus=sum(t == "light" for t in assignment.values()),
                heavy_gpus=sum(t == "heavy" for t in assignment.values()), created_at=T0 + version,
                reason=f"v{version}")
    return Plan.model_validate({**base, **fields, "version": version, "assignment": assignment})


def test_the_grid_shows_each_gpus_planned_and_served_work():
    current = plan(3, {"g0": "light", "g1": "heavy", "g2": "heavy"})
    workers = [{"gpu": "g0", "tier": "light", "model": "l1", "host": "a"},
               {"gpu": "g1", "tier": "light", "model": "l1", "host": "a"}]
    cells = {cell["gpu"]: cell for cell in fleet.grid(current, workers, {"a": ["g0", "g1", "g2", "g3"]})}
    assert [cells[gpu]["state"] for gpu in ("g0", "g1", "g2", "g3")] == ["serving", "switching", "down", "idle"]
    assert (cells["g1"]["tier"], cells["g1"]["model"], cells["g1"]["worker_tier"]) == ("heavy", "h1", "light")
    assert cells["g2"]["host"] == "a" and cells["g3"]["tier"] is None


def test_plan_changes_say_what_changed_and_what_the_switch_cost():
    first = plan(1, {"g0": "light", "g1": "heavy"})
    second = plan(2, {"g0": "light", "g1": "light"}, d=0.5, heavy_model="h2")
    switches = fleet.Switches(lambda before, after: 7.5)
    switches.follow(first, T0 + 1, [])
    switches.follow(second, T0 + 2, [{"gpu": "g0", "tier": "light", "model": "l1"}])
    assert switches.pending() == 2
    switches.follow(second, T0 + 6, [{"gpu": "g0", "tier": "light", "model": "l1"},
                                     {"gpu": "g1", "tier": "light", "model": "l1"}])
    assert switches.pending() is None
    rows = fleet.changes([second, first], switches)
    assert rows[0]["version"] == 2 and rows[0]["reason"] == "v2"
    assert rows[0]["changes"] == ["heavy_model h1 -> h2", "d 0.3 -> 0.5", "light_gpus 1 -> 2", "heavy_gpus 1 -> 0"]
    assert rows[0]["expected_s"] == 7.5 and rows[0]["realised_s"] == pytest.approx(4.0)  # g1 served 4 s after v2
    assert rows[0]["dark_gpu_s"] == pytest.approx(4.0)
    assert rows[1]["changes"] == ["first plan"] and rows[1]["expected_s"] is None
    assert fleet.pairs([second, first], None) == {2: ("l1", "h2"), 1: ("l1", "h1")}


def test_a_change_that_moves_no_gpu_costs_nothing():
    first = plan(1, {"g0": "light"})
    second = plan(2, {"g0": "light"}, r=0.4)
    switches = fleet.Switches(lambda before, after: 0.0)
    switches.follow(first, T0, [])
    switches.follow(second, T0 + 1, [])
    assert switches.costs[2] == {"expected_s": 0.0, "realised_s": 0.0, "dark_gpu_s": 0.0}
    assert fleet.differences(first, second) == ["r 0.2 -> 0.4"]


def test_overall_reads_the_window():
    window = Window()
    for second in range(20):
        window.arrived(T0 + second)
        window.finished(job(T0 + second, 1.0, tenant="a" if second % 2 else "b"))
    window.judged(T0 + 1, escalated=True)
    window.judged(T0 + 1, escalated=False)
    result = overall(window, T0 + 20, None)
    assert result["ended"] == 20 and result["escalation"] == 0.5 and result["judged"] == 2
    assert result["window_s"] == 20.0 and result["arrivals_qps"] == pytest.approx(1.0)  # the 20 s it has data for
    assert overall(Window(), T0, None)["arrivals_qps"] is None
    assert {row["name"] for row in result["tenants"]} == {"a", "b"}
    assert orjson.loads(orjson.dumps(result))["attainment"] == 1.0


def test_the_oldest_change_listed_is_compared_with_the_plan_before_it():
    history = [plan(3, {"g0": "light"}, r=0.5), plan(2, {"g0": "light"}, r=0.4), plan(1, {"g0": "light"})]
    rows = fleet.changes(history, fleet.Switches(lambda before, after: 0.0), limit=2)
    assert [row["version"] for row in rows] == [3, 2]
    assert rows[1]["changes"] == ["r 0.2 -> 0.4"]
