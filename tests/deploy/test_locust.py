"""The Locust load test, headless for a few seconds against the real services (emulated models,
no delay): its exit code, reports and summary, and the exit code when jobs fail; over AMQP and
through the HTTP api (both of its routes)."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

import orjson
import pytest

from shared import apikeys
from shared.policies.tenancy import Limits
from shared.store import Store
from tests.helpers import make_settings, namespace
from tests.stack import running_api, running_stack, running_webhooks

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
NO_LIMITS = Limits(100_000.0, 100_000, 1_000_000)  # a load test's key: limits no trace here reaches


def write_trace(path: Path, arrivals: int, spacing_ms: int) -> Path:
    path.write_text("# arrival_ms,prompt_id\n"
                    + "".join(f"{i * spacing_ms},{i * 37 % 5000}\n" for i in range(arrivals)))
    return path


async def run_locust(out: Path, namespace: str, trace: Path, *extra: str, env: dict | None = None) -> tuple[int, str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--trace", str(trace), "--namespace", namespace, "--slo", "30", "--job-timeout", "20",
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--summary", str(out / "summary.json"),
               "--run-time", "60s", *extra]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT,
                                                   env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, output.decode()


async def test_headless_run_replays_the_trace_and_writes_the_reports(tmp_path):
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0,
                             plan_r=0.3, plan_d=0.3)
    trace = write_trace(tmp_path / "trace.csv", arrivals=30, spacing_ms=100)
    async with running_stack(settings):
        code, output = await run_locust(tmp_path, settings.namespace, trace)
    assert code == 0, output[-3000:]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["submitted"] == summary["done"] == 30 and summary["replayed"] == 30
    assert summary["failed"] == summary["expired"] == summary["lost"] == summary["publish_errors"] == 0
    assert summary["slo_violations"] == 0 and summary["slo_violation_ratio"] == 0
    assert set(summary["by_path"]) <= {"light", "heavy", "escalated"} and sum(summary["by_path"].values()) == 30
    with open(tmp_path / "locust_stats.csv", newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Request Count"]) == 30 and int(rows["Aggregated"]["Failure Count"]) == 0
    assert float(rows["Aggregated"]["95%"]) > 0
    assert "hadis summary" in output
    assert (tmp_path / "report.html").stat().st_size > 10_000


def stats_rows(out: Path) -> dict[tuple[str, str], dict]:
    with open(out / "locust_stats.csv", newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


async def api_key(store: Store, limits: Limits = NO_LIMITS) -> str:
    key, stored = apikeys.new_key("loadtest")
    await store.put_api_key(stored)
    await store.set_tenant_limits("loadtest", limits)
    return key


async def test_http_user_replays_the_trace_through_the_api(tmp_path):
    # The same trace and summary as over AMQP; the job rows are the same, the api's calls are rows too.
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0,
                             plan_r=0.3, plan_d=0.3)
    trace = write_trace(tmp_path / "trace.csv", arrivals=30, spacing_ms=100)
    async with running_stack(settings) as stack, running_api(settings) as base:
        key = await api_key(stack.store)
        code, output = await run_locust(tmp_path, settings.namespace, trace, "--http", "--api-url", base,
                                        env={"HADIS_API_KEY": key})
    assert code == 0, output[-3000:]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["via"] == "http" and summary["http_route"] == "jobs" and summary["api_url"] == base
    assert summary["submitted"] == summary["done"] == 30 and summary["replayed"] == 30
    assert summary["failed"] == summary["expired"] == summary["lost"] == summary["publish_errors"] == 0
    assert set(summary["by_path"]) <= {"light", "heavy", "escalated"} and sum(summary["by_path"].values()) == 30
    rows = stats_rows(tmp_path)
    jobs = [row for (kind, _), row in rows.items() if kind == "job"]
    assert sum(int(row["Request Count"]) for row in jobs) == 30
    assert all(int(row["Failure Count"]) == 0 and float(row["Average Content Size"]) > 0 for row in jobs)
    for route in ("POST /v1/jobs", "GET /v1/jobs/{id}/events", "GET /v1/jobs/{id}", "GET /v1/jobs/{id}/image"):
        row = rows[tuple(route.split(" "))]
        assert int(row["Request Count"]) == 30 and int(row["Failure Count"]) == 0, (route, row)
    assert "All users spawned" in output and '"JobUser": 0' in output


async def test_http_user_images_route_and_a_rate_limit_are_counted(tmp_path):
    # POST /v1/images/generations is one `job` row, `images`; requests the rate limit refuses are
    # publish errors, and make the exit code non-zero.
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    trace = write_trace(tmp_path / "trace.csv", arrivals=12, spacing_ms=10)
    async with running_stack(settings) as stack, running_api(settings) as base:
        key = await api_key(stack.store, Limits(0.01, 8, 1000))
        code, output = await run_locust(tmp_path, settings.namespace, trace, "--via", "http", "--http-route",
                                        "images", "--api-url", base, env={"HADIS_API_KEY": key})
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert code == 1, output[-3000:]
    assert summary["http_route"] == "images" and summary["replayed"] == 12
    assert summary["done"] == summary["submitted"] == 8 and summary["by_path"] == {"images": 8}
    assert summary["publish_errors"] == 4 and summary["lost"] == summary["failed"] == summary["expired"] == 0
    rows = stats_rows(tmp_path)
    assert int(rows[("job", "images")]["Request Count"]) == 8 and int(rows[("job", "images")]["Failure Count"]) == 0
    assert int(rows[("job", "publish")]["Failure Count"]) == 4


async def test_http_user_refuses_to_start_without_a_good_key(tmp_path):
    settings = make_settings()
    trace = write_trace(tmp_path / "trace.csv", arrivals=1, spacing_ms=1)
    code, output = await run_locust(tmp_path, settings.namespace, trace, "--http", env={"HADIS_API_KEY": ""})
    assert code != 0 and "needs an api key" in output
    async with namespace(settings), running_api(settings) as base:
        wrong, _ = apikeys.new_key("nobody")
        code, output = await run_locust(tmp_path, settings.namespace, trace, "HttpJobUser", "--api-url", base,
                                        env={"HADIS_API_KEY": wrong})
    assert code != 0 and "refused the key (401)" in output


async def test_failed_jobs_make_the_exit_code_non_zero(tmp_path):
    # A job with a deadline already past is `expired` by the router: a failure for the load test.
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    trace = write_trace(tmp_path / "trace.csv", arrivals=3, spacing_ms=50)
    async with running_stack(settings, services=("controller", "router")):
        code, output = await run_locust(tmp_path, settings.namespace, trace, "--slo", "0.000001")
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert code == 1, output[-3000:]
    assert summary["expired"] == 3 and summary["done"] == 0


async def test_refuses_to_start_without_a_stack(tmp_path):
    trace = write_trace(tmp_path / "trace.csv", arrivals=1, spacing_ms=1)
    code, output = await run_locust(tmp_path, make_settings().namespace, trace)
    assert code != 0 and "not reachable" in output


async def test_mixed_scenario_checks_every_feature_and_loses_nothing(tmp_path):
    # --http-route mixed (loadtest/mixed.py): every kind drawn at least once over 40 arrivals, each
    # a `feature` row; nothing lost, each webhook job one verified delivery, each cancel 200 or 409.
    # paper-l40s-x10's profiled steps and batch times, at half speed: the emulated models take their
    # steps (so streams get previews, and cancels can meet a running batch).
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.5,
                             slo_s=6, plan_r=0.3, plan_d=0.3, webhook_allow_networks="127.0.0.1/32",
                             webhook_poll_s=0.05)
    trace = write_trace(tmp_path / "trace.csv", arrivals=40, spacing_ms=100)
    async with running_stack(settings) as stack, running_webhooks(settings), running_api(settings) as base:
        key = await api_key(stack.store)
        code, output = await run_locust(tmp_path, settings.namespace, trace, "--http-route", "mixed",
                                        "--api-url", base, "--cancel-max-delay", "0.05",
                                        "--webhook-timeout", "10", env={"HADIS_API_KEY": key})
    assert code == 0, output[-3000:]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    found = summary["mixed"]
    assert summary["via"] == "http" and summary["http_route"] == "mixed" and summary["replayed"] == 40
    assert found["lost"] == summary["lost"] == 0 and found["violations"] == {}, found
    features = found["features"]
    assert set(features) == {"plain", "jpeg", "webp", "webhook", "cancel", "low", "high", "stream"}
    for kind, tally in features.items():
        assert tally["submitted"] + tally["refused"] >= 1, (kind, tally)
        assert tally["lost"] == tally["bad"] == tally["not_accepted"] == 0, (kind, tally)
    webhooks = found["webhooks"]
    assert webhooks["jobs"] == features["webhook"]["submitted"] == webhooks["ok"] >= 1, webhooks
    assert webhooks["missing"] == webhooks["bad_signature"] == webhooks["refused_address"] == 0, webhooks
    assert sum(found["cancel"]["answers"].values()) == features["cancel"]["submitted"]
    assert set(found["cancel"]["answers"]) <= {"200", "409"}
    assert found["stream"]["completed_events"] == features["stream"]["done"] >= 1
    assert found["stream"]["partial_events"] >= 1 and found["stream"]["first_partial_s"]["p50"] > 0
    rows = stats_rows(tmp_path)
    assert {name for kind, name in rows if kind == "feature"} >= set(features)
    assert int(rows[("webhook", "delivery")]["Request Count"]) >= webhooks["ok"]
