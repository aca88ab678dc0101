"""The Prometheus registry: the families the services fill, the HTTP endpoint, the GPU reader."""

from __future__ import annotations

import os
import stat
import urllib.request

from shared import metrics
from shared.schemas import JobState, Plan


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_endpoint_serves_every_family():
    metrics.mark_ready("router")
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'hadis_service_ready{service="router"} 1.0' in text
    for family in ("hadis_queue_depth", "hadis_job_latency_seconds", "hadis_slo_violations_total",
                   "hadis_judge_verdicts_total", "hadis_plan_version", "hadis_batch_size", "hadis_routed_total",
                   "hadis_gpu_memory_bytes", "hadis_demand_qps", "process_cpu_seconds_total"):
        assert f"# TYPE {family.removesuffix('_total')}" in text, family


def test_done_in_time_and_late():
    before_late = sample("hadis_slo_violations_total", tier="heavy", reason="late")
    before_count = sample("hadis_job_latency_seconds_count", tier="heavy")
    metrics.observe_done("heavy", submitted_at=100.0, deadline=110.0, finished_at=105.0)
    metrics.observe_done("heavy", submitted_at=100.0, deadline=110.0, finished_at=112.5)
    assert sample("hadis_job_latency_seconds_count", tier="heavy") == before_count + 2
    assert sample("hadis_slo_violations_total", tier="heavy", reason="late") == before_late + 1
    assert sample("hadis_job_latency_seconds_bucket", tier="heavy", le="5.0") >= 1


def test_failed_and_expired_are_violations():
    before = sample("hadis_slo_violations_total", tier="none", reason="expired")
    metrics.observe_unserved(JobState.expired)
    metrics.observe_unserved(JobState.failed, tier="light")
    assert sample("hadis_slo_violations_total", tier="none", reason="expired") == before + 1
    assert sample("hadis_jobs_finished_total", tier="light", state="failed") >= 1


def test_plan_gauges():
    plan = Plan(version=7, light_model="a", heavy_model="b", r=0.2, d=0.5, light_batch=8, heavy_batch=2)
    metrics.observe_plan(plan)
    assert sample("hadis_plan_version") == 7
    assert sample("hadis_plan_share", kind="heavy") == plan.heavy_share
    assert sample("hadis_plan_batch_size", tier="light") == 8


def test_verdicts_batches_and_depths():
    metrics.observe_verdict("tiny-sd-turbo", "escalated")
    busy_before = sample("hadis_model_busy_seconds_total", tier="light", model="tiny-sd-turbo") or 0.0
    metrics.observe_batch("light", "tiny-sd-turbo", 4, 0.3, 0.25)
    metrics.observe_queue_depths({"hadis.tier.light": 12})
    metrics.observe_routed("heavy")
    metrics.observe_demand(2.5)
    assert sample("hadis_judge_verdicts_total", model="tiny-sd-turbo", verdict="escalated") >= 1
    assert sample("hadis_batch_size_bucket", tier="light", le="4.0") >= 1
    assert sample("hadis_queue_depth", queue="hadis.tier.light") == 12
    assert sample("hadis_routed_total", tier="heavy") >= 1
    assert sample("hadis_demand_qps") == 2.5
    assert sample("hadis_model_busy_seconds_total", tier="light", model="tiny-sd-turbo") == busy_before + 0.25


def test_parse_nvidia_smi_skips_unreadable_rows():
    rows = metrics.parse_nvidia_smi("0, 1024, 81559\n1, [N/A], [N/A]\n\n2, 0, 143771\n")
    assert rows == [metrics.GpuMemory("0", 1024 * 2**20, 81559 * 2**20), metrics.GpuMemory("2", 0, 143771 * 2**20)]


def test_gpu_collector_without_nvidia_smi_is_empty():
    collector = metrics.GpuMemoryCollector(command="hadis-no-such-nvidia-smi")
    (family,) = list(collector.collect())
    assert family.name == "hadis_gpu_memory_bytes" and family.samples == []


def test_gpu_collector_runs_the_command(tmp_path, monkeypatch):
    # An executable that answers like nvidia-smi, to check the query's arguments and parsing end to end.
    script = tmp_path / "nvidia-smi"
    script.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=index,memory.used,memory.total" ] || exit 3\n'
                      'echo "0, 2048, 81559"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (family,) = list(metrics.GpuMemoryCollector().collect())
    values = {sample.labels["kind"]: sample.value for sample in family.samples}
    assert values == {"used": 2048 * 2**20, "total": 81559 * 2**20}


def test_plan_gpus_and_fid_follow_the_plan_and_leave_no_stale_series():
    first = Plan(version=1, light_model="a", heavy_model="b", r=0.2, d=0.5, light_batch=8, heavy_batch=2,
                 light_gpus=3, heavy_gpus=1, fid=20.5)
    metrics.observe_plan(first)
    assert sample("hadis_plan_gpus", tier="light", model="a") == 3
    assert sample("hadis_plan_gpus", tier="heavy", model="b") == 1
    assert sample("hadis_plan_fid", light_model="a", heavy_model="b") == 20.5
    metrics.observe_plan(first.model_copy(update={"version": 2, "light_model": "c", "light_gpus": 2, "fid": None}))
    assert metrics.REGISTRY.get_sample_value("hadis_plan_gpus", {"tier": "light", "model": "a"}) is None
    assert sample("hadis_plan_gpus", tier="light", model="c") == 2
    assert metrics.REGISTRY.get_sample_value("hadis_plan_fid", {"light_model": "a", "heavy_model": "b"}) is None


def test_workers_per_tier_and_model_with_a_zero_for_a_tier_nobody_serves():
    beats = [{"gpu": "g0", "tier": "light", "model": "m1"}, {"gpu": "g1", "tier": "light", "model": "m1"}]
    metrics.observe_workers(beats, {"light": "m1", "heavy": "m2"})
    assert sample("hadis_workers", tier="light", model="m1") == 2
    assert metrics.REGISTRY.get_sample_value("hadis_workers", {"tier": "heavy", "model": "m2"}) == 0
    metrics.observe_workers([{"gpu": "g0", "tier": "heavy", "model": "m2"}], {"light": "m3", "heavy": "m2"})
    assert metrics.REGISTRY.get_sample_value("hadis_workers", {"tier": "light", "model": "m1"}) is None
    assert metrics.REGISTRY.get_sample_value("hadis_workers", {"tier": "light", "model": "m3"}) == 0
    assert sample("hadis_workers", tier="heavy", model="m2") == 1


def test_agents_up_down_and_gone():
    metrics.observe_agents({"h1": True, "h2": False})
    assert sample("hadis_agent_up", host="h1") == 1
    assert metrics.REGISTRY.get_sample_value("hadis_agent_up", {"host": "h2"}) == 0
    metrics.observe_agents({"h1": True})
    assert metrics.REGISTRY.get_sample_value("hadis_agent_up", {"host": "h2"}) is None
    metrics.forget_cluster_view()
    assert metrics.REGISTRY.get_sample_value("hadis_agent_up", {"host": "h1"}) is None


def test_outcome_series_exist_from_zero():
    """rate() and increase() miss a counter's first increment when the series is born with it."""
    for name, labels in [("hadis_slo_violations_total", {"tier": "light", "reason": "late"}),
                         ("hadis_slo_violations_total", {"tier": "none", "reason": "expired"}),
                         ("hadis_jobs_finished_total", {"tier": "heavy", "state": "done"}),
                         ("hadis_routed_total", {"tier": "heavy"}),
                         ("hadis_job_latency_seconds_count", {"tier": "light"}),
                         ("hadis_dead_letters_parked_total", {"reason": "no_job_id"})]:
        assert metrics.REGISTRY.get_sample_value(name, labels) is not None, (name, labels)


def test_a_models_first_verdict_brings_every_verdict_series_at_zero():
    """A plan that escalates nothing shows an escalation rate of 0, not an absent series."""
    metrics.observe_verdict("accepting-only", "accepted")
    assert metrics.REGISTRY.get_sample_value("hadis_judge_verdicts_total",
                                             {"model": "accepting-only", "verdict": "escalated"}) == 0.0
    assert sample("hadis_judge_verdicts_total", model="accepting-only", verdict="accepted") == 1.0
