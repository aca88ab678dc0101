"""`make loadtest` as the README and loadtest/README.md give it, against `make run`'s stack: `hadis serve
all` (default settings: the tiny pipelines and the CLIP judge on the CPU, two emulated GPUs) in a
namespace of its own, its api on a free port. Both paths, one after the other against the one stack:
`make loadtest` (AMQP; reports in out/loadtest/) and `make loadtest LOADTEST_ARGS=--http` (through the
api with a key the script makes and revokes; out/loadtest-http/), each on a short trace
(LOADTEST_TRACE) bounded by LOADTEST_RUN_TIME. tests/deploy/test_locust.py covers the locustfile's
options against in-process services; this is the command a newcomer types."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shared.client import Client
from shared.schemas import Job, JobState
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
HADIS = Path(sys.executable).with_name("hadis")
JOBS = 6
STACK_READY_S = 240.0
LOADTEST_TIMEOUT_S = 240.0


def write_trace(path: Path) -> Path:
    path.write_text("# arrival_ms,prompt_id\n" + "".join(f"{i * 500},{i * 131 % 5000}\n" for i in range(JOBS)))
    return path


def stack_env(namespace: str, port: int) -> dict[str, str]:
    """This environment (the broker and the store) with the stack's namespace and api: nothing else
    of the test's; no HADIS_API_KEY, so the script makes its own."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("HADIS_", "LOADTEST_")) or name in ("HADIS_AMQP_URL", "HADIS_REDIS_URL")}
    return {**env, "HADIS_NAMESPACE": namespace, "HADIS_EMULATED_GPUS": "2", "HADIS_API_PORT": str(port),
            "HADIS_API_URL": f"http://127.0.0.1:{port}"}


@pytest.fixture
def serve_all(tmp_path) -> Iterator[tuple[dict[str, str], Path]]:
    """`hadis serve all` in a session of its own; stopped with SIGTERM (SIGKILL to its session if it
    hangs) and its namespace deleted afterwards."""
    namespace = make_settings().namespace
    env = stack_env(namespace, free_port())
    log = tmp_path / "serve-all.log"
    with open(log, "ab") as output:
        stack = subprocess.Popen([str(HADIS), "serve", "all"], cwd=ROOT, env=env, stdout=output,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        asyncio.run(first_job_done(env, stack, log))
        yield env, log
    finally:
        if stack.poll() is None:
            stack.send_signal(signal.SIGTERM)
            try:
                stack.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait(timeout=30)
        asyncio.run(delete_namespace(namespace))


async def first_job_done(env: dict[str, str], stack: subprocess.Popen, log: Path) -> None:
    """Until a job went through (the workers have loaded their models) and the api answers."""
    settings = make_settings(namespace=env["HADIS_NAMESPACE"])
    client = await Client.open(settings)
    try:
        job = Job(prompt="make loadtest warm-up: a red bicycle", slo_s=STACK_READY_S)
        await client.submit(job)
        give_up_at = time.monotonic() + STACK_READY_S
        while (record := await client.wait(job.job_id, timeout_s=5.0)) is None:
            assert stack.poll() is None, f"hadis serve all exited with {stack.returncode}:\n{tail(log)}"
            assert time.monotonic() < give_up_at, f"no job done within {STACK_READY_S:.0f} s:\n{tail(log)}"
        assert record.state is JobState.done, (record, tail(log))
    finally:
        await client.close()
    with urllib.request.urlopen(f"{env['HADIS_API_URL']}/healthz", timeout=10) as response:
        assert response.status == 200


async def delete_namespace(namespace: str) -> None:
    client = await Client.open(make_settings(namespace=namespace))
    try:
        await client.delete_namespace()
    finally:
        await client.close()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def make_loadtest(env: dict[str, str], trace: Path, *variables: str) -> tuple[subprocess.CompletedProcess, float]:
    """`make loadtest [VAR=...]` from the checkout's root, as typed (with the stamp of `make install`
    taken as up to date: a test must not reinstall the virtualenv)."""
    env = {**env, "LOADTEST_TRACE": str(trace), "LOADTEST_RUN_TIME": "120s"}
    started = time.monotonic()
    result = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "loadtest", *variables],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=LOADTEST_TIMEOUT_S)
    return result, time.monotonic() - started


def check_summary(out: Path, since: float, via: str) -> dict:
    summary_path = out / "summary.json"
    assert summary_path.stat().st_mtime >= since, f"{summary_path} was not written by this run"
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["via"] == via
    assert summary["replayed"] == summary["submitted"] == summary["done"] == JOBS, summary
    assert summary["failed"] == summary["expired"] == summary["lost"] == summary["publish_errors"] == 0, summary
    assert sum(summary["by_path"].values()) == JOBS
    for report in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "report.html"):
        assert (out / report).stat().st_mtime >= since, f"{out / report} was not written by this run"
    return summary


def test_make_loadtest_over_amqp_and_through_the_api(serve_all, tmp_path):
    env, log = serve_all
    trace = write_trace(tmp_path / "trace.csv")

    since = time.time() - 1
    result, amqp_s = make_loadtest(env, trace)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output[-4000:]}\n--- hadis serve all:\n{tail(log)}"
    assert "hadis summary" in output
    check_summary(ROOT / "out" / "loadtest", since, "amqp")

    since = time.time() - 1
    result, http_s = make_loadtest(env, trace, "LOADTEST_ARGS=--http")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output[-4000:]}\n--- hadis serve all:\n{tail(log)}"
    assert "made api key" in output
    summary = check_summary(ROOT / "out" / "loadtest-http", since, "http")
    assert summary["api_url"] == env["HADIS_API_URL"] and summary["http_route"] == "jobs"
    print(f"make loadtest: {amqp_s:.1f} s over AMQP, {http_s:.1f} s through the api")
