#!/usr/bin/env python3
"""CI in lanes: the static checks first (they fail in a minute what the suite would fail in ten),
then the test tiers side by side, each lane a sequence of make targets.

Why lanes: most of the suite waits (on emulated GPUs, on the broker, on a service's restart), so two
cores carry three lanes; the tiers share no server they stop (the fault tests kill and restart only
servers of their own: tests/faults/servers.py) and each test runs in a namespace of its own.

Each step's output goes to $CI_LOGS/<target>.log (default out/ci/); the console gets one line per
step (passed or failed, and how long it took), the last 60 lines of a failed step's log, and a
table of every step's time at the end. Exit status 1 when any step failed.

    python3 scripts/ci.py --first lint,typecheck --lane test,test-wheel --lane test-faults
    (.ci/run gives the lanes CI runs; `make ci` runs .ci/run)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    target: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system of make and every descendant it waited for (not dockerd's)
    code: int | None = None


def run_step(step: Step, logs: Path, lock: threading.Lock) -> bool:
    log = logs / f"{step.target}.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(["make", "--no-print-directory", step.target], cwd=ROOT, env=lane_env(),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # wait4, not wait: the step's own CPU time, which the lanes' shared two cores make the cost that
        # counts (the wall time of one step depends on what runs beside it).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = step.code = os.waitstatus_to_exitcode(status)
    step.seconds = time.monotonic() - started
    step.cpu_seconds = usage.ru_utime + usage.ru_stime
    with lock:
        verdict = "passed" if step.code == 0 else f"FAILED (exit {step.code})"
        print(f"[ci] make {step.target}: {verdict} in {step.seconds:.0f} s, {step.cpu_seconds:.0f} s of CPU "
              f"(log {os.path.relpath(log, ROOT)})",
              flush=True)
        lines = log.read_text(errors="replace").splitlines()
        shown = lines[-60:] if step.code else lines[-1:]
        for line in shown:
            print(f"[{step.target}] {line}", flush=True)
    return step.code == 0


def lane_env() -> dict[str, str]:
    """One OpenMP thread per torch process unless the caller says otherwise: the lanes already keep
    both cores busy, and torch's default (a thread per core in every process) oversubscribes them
    with threads that spin while they wait. Each pytest run lists its slowest tests in its log and
    the CPU seconds of each test file (tests/cpu_time.py), so a tier that grows shows where."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} --durations=20 -p tests.cpu_time".strip()
    return env


def run_lane(steps: list[Step], logs: Path, lock: threading.Lock) -> None:
    """A lane stops at its first failure: a later step of it would only repeat the cause."""
    for step in steps:
        if not run_step(step, logs, lock):
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lane", action="append", required=True,
                        help="a lane: make targets, comma-separated (repeatable)")
    parser.add_argument("--first", default="", help="steps before the lanes, comma-separated")
    args = parser.parse_args()
    logs = Path(os.environ.get("CI_LOGS", ROOT / "out" / "ci"))
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    began = time.monotonic()
    machine_start = machine_cpu()
    first = [Step(target) for target in args.first.split(",") if target]
    for step in first:
        if not run_step(step, logs, lock):
            return summary(first, [], began, machine_start)
    lanes = [[Step(target) for target in lane.split(",")] for lane in args.lane]
    threads = [threading.Thread(target=run_lane, args=(lane, logs, lock)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summary(first, lanes, began, machine_start)


def machine_cpu() -> tuple[float, float] | None:
    """(busy, idle) CPU seconds of the whole machine since boot, from /proc/stat (Linux): busy counts
    what no step's own count sees, such as the broker nodes the fault tests start and dockerd's
    containers."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    hertz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / hertz, (idle + iowait) / hertz


def summary(first: list[Step], lanes: list[list[Step]], began: float,
            machine_start: tuple[float, float] | None) -> int:
    steps = first + [step for lane in lanes for step in lane]
    print("[ci] step            seconds  cpu_s  result")
    for step in steps:
        result = "skipped" if step.code is None else ("ok" if step.code == 0 else f"exit {step.code}")
        print(f"[ci] {step.target:<16}{step.seconds:8.0f}{step.cpu_seconds:7.0f}  {result}")
    failed = [step.target for step in steps if step.code != 0]
    verdict = f"failed: {' '.join(failed)}" if failed else "all passed"
    print(f"[ci] total {time.monotonic() - began:.0f} s; {verdict}")
    if machine_start is not None and (now := machine_cpu()) is not None:
        busy, idle = now[0] - machine_start[0], now[1] - machine_start[1]
        print(f"[ci] the machine's cores: {busy:.0f} s busy, {idle:.0f} s idle ({busy / max(busy + idle, 1):.0%} busy; "
              f"{os.cpu_count()} cores)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
