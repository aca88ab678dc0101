"""A CI-sized run of scripts/bench_worker.py: both paths of both backends run through the
real worker, RabbitMQ and Redis, and the output ends with `worker_efficiency <ratio>`.
(The figure itself is the benchmark's to report, not a test's to assert.)"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_worker.py"
sys.path.insert(0, str(SCRIPT.parent))

from cpu_isolation import listening_pids, local_ports  # noqa: E402

BACKEND_LINE = re.compile(
    r"^(tiny|emulated): .* bare loop (\d+\.\d+) images/s, queue -> worker -> store (\d+\.\d+) images/s, "
    r"ratio (\d+\.\d{3}), model busy (\d+\.\d{3}) of the service path's time, .*"
    r"ratio ((?:\d+\.\d{3} ?)+), busy ((?:\d+\.\d{3} ?)+)\)$"
)


def server_cpus() -> dict[int, set[int]]:
    """The CPUs of the local RabbitMQ and Redis, which the benchmark moves for its run."""
    settings = Settings()
    servers = listening_pids(local_ports(settings.amqp_url.get_secret_value(), settings.redis_url.get_secret_value()))
    return {pid: os.sched_getaffinity(pid) for pid in servers}


def test_bench_worker_prints_both_rates_and_the_efficiency_last() -> None:
    servers_before = server_cpus()
    run = subprocess.run(
        # One epoch (a fresh worker and bare loop each): a tiny epoch is 15 s of CPU, most of it the
        # worker's and the bare loop's start, and a second one runs the same code again.
        [sys.executable, str(SCRIPT), "--backends", "tiny", "emulated", "--batch", "2", "--batches", "3",
         "--epochs", "1", "--rounds", "2", "--timeout-s", "120"],
        capture_output=True, text=True, timeout=300, cwd=SCRIPT.parents[1],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    ratios = {}
    for line in lines:
        match = BACKEND_LINE.match(line)
        if match:
            name, bare, served, ratio, busy, round_ratios, round_busy = match.groups()
            assert float(bare) > 0 and float(served) > 0
            # The efficiency is the median of the rounds' ratios; the model's busy share is a fraction.
            assert float(ratio) == pytest.approx(statistics.median(map(float, round_ratios.split())), abs=0.001)
            assert 0 < float(busy) <= 1.01 and len(round_busy.split()) == 2  # every round of the epoch
            ratios[name] = float(ratio)
    assert sorted(ratios) == ["emulated", "tiny"], run.stdout
    last = re.fullmatch(r"worker_efficiency (\d+\.\d{3})", lines[-1])
    assert last, lines[-1]
    assert float(last.group(1)) == min(ratios.values())
    tiny = next(line for line in lines if line.startswith("tiny:"))
    if len(os.sched_getaffinity(0)) > 1:
        assert re.search(r"model on CPU \d+, worker and harness on CPU [\d,]+", tiny), tiny
    assert server_cpus() == servers_before  # put back
