"""The Locust load test, headless for a few seconds against the real services (emulated models,
no delay): its exit code, reports and summary, and the exit code when jobs fail."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def write_trace(path: Path, arrivals: int, spacing_ms: int) -> Path:
    path.write_text("# arrival_ms,prompt_id\n"
                    + "".join(f"{i * spacing_ms},{i * 37 % 5000}\n" for i in range(arrivals)))
    return path


async def run_locust(out: Path, namespace: str, trace: Path, *extra: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--trace", str(trace), "--namespace", namespace, "--slo", "30", "--job-timeout", "20",
               "--csv", str(out / "locust"), "--html", str(out / "report.html"), "--summary", str(out / "summary.json"),
               "--run-time", "60s", *extra]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
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
