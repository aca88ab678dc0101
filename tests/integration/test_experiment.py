"""`hadis experiment` end to end on a CI-sized trace: the real services on emulated GPUs in a
namespace of their own, the report, and the namespace gone afterwards; then `hadis simulate`
on the same trace."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from shared.experiments.runner import DELETE_TIMEOUT_S
from shared.supervisor import STOP_TIMEOUT_S

HADIS = str(Path(sys.executable).parent / "hadis")


def short_trace(path: Path, jobs: int = 36, gap_ms: int = 250) -> Path:
    path.write_text("".join(f"{i * gap_ms},{(i * 137) % 5000}\n" for i in range(jobs)))
    return path


def run(mode: str, trace: Path, out: Path, policy: str = "hadis", *extra: str) -> dict:
    command = [HADIS, mode, "--trace", str(trace), "--policy", policy, "--gpus", "4", "--profile", "paper-l40s-x10",
               "--slo", "6", "--out", str(out), "--plan-period", "2", "--dwell", "4", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return orjson.loads(result.stdout)


def test_a_short_trace_through_the_real_services_and_the_simulator(tmp_path):
    trace = short_trace(tmp_path / "trace.txt")
    report = run("experiment", trace, tmp_path / "exp" / "hadis")
    assert report["submitted"] == 36 and report["lost"] == 0 and report["failed"] == 0
    assert report["completed"] + report["dropped"] == 36 and report["completed"] > 0
    assert report["mean_fid"] is not None and report["p99_latency_s"] is not None
    rows = list(csv.DictReader((tmp_path / "exp" / "hadis" / "timeseries.csv").open()))
    assert sum(int(row["completed"]) for row in rows) == report["completed"]
    assert (tmp_path / "exp" / "hadis" / "timeline.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "exp" / "hadis" / "logs" / "controller.log").exists()
    namespace = report["notes"]["namespace"]
    queues = subprocess.run(["rabbitmqctl", "list_queues", "name", "-q"], capture_output=True, text=True).stdout
    assert namespace not in queues

    # The same trace through the simulator (docs/experiments.md compares the two on full traces;
    # 36 jobs are too few for their FIDs to agree closely).
    simulated = run("simulate", trace, tmp_path / "sim" / "hadis", "hadis", "--band")
    assert simulated["submitted"] == 36 and simulated["lost"] == 0
    assert simulated["completed"] + simulated["dropped"] == 36 and simulated["mean_fid"] is not None
    # The band: the simulator over the plan period's phase and the spread of worker starts.
    band = orjson.loads((tmp_path / "sim" / "hadis" / "band.json").read_bytes())
    assert band["runs"] == len(band["perturbations"]) == 12
    assert band["nominal"]["violations"] == simulated["slo_violation_ratio"]
    assert band["violations"][0] <= simulated["slo_violation_ratio"] <= band["violations"][1]
    assert {row["offset_s"] for row in band["perturbations"]} == {0.0, 0.5, 1.0, 1.5}  # quarters of 2 s
    compared = subprocess.run([HADIS, "compare", str(tmp_path / "exp"), "--against", str(tmp_path / "sim")],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr[-3000:]
    (row,) = (tmp_path / "exp" / "differences.md").read_text().splitlines()[2:]
    assert row.startswith("| hadis |") and ("| yes (12 runs) |" in row or "| no (12 runs) |" in row)


def children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def test_a_run_killed_with_sigterm_stops_its_services_and_deletes_its_namespace(tmp_path):
    """`kill` (SIGTERM) while the services run: none of them is left serving, no queue of the
    run's namespace is left in the broker."""
    trace = short_trace(tmp_path / "trace.txt", jobs=400)
    command = [HADIS, "experiment", "--trace", str(trace), "--policy", "hadis", "--gpus", "2", "--profile",
               "paper-l40s-x10", "--slo", "6", "--out", str(tmp_path / "exp")]
    with (tmp_path / "stderr.txt").open("w") as stderr:  # a file: a pipe nobody reads can block the runner
        runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up and not (tmp_path / "exp" / "logs" / "controller.log").exists():
        time.sleep(0.2)
    time.sleep(5.0)  # the services are up and the replay has begun or is about to
    services = children_of(runner.pid)
    assert len(services) >= 4, services
    runner.send_signal(signal.SIGTERM)
    # The bound is the runner's: every service's graceful stop within STOP_TIMEOUT_S, then a kill,
    # then the namespace's deletion within DELETE_TIMEOUT_S; 30 s more for a host CI keeps busy.
    # Past it, the runner's log says which step it waits on (services_stopping, services_stopped,
    # namespace_deleted).
    try:
        code = runner.wait(timeout=STOP_TIMEOUT_S + DELETE_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        runner.kill()
        raise AssertionError(f"the runner did not exit; it said:\n{what_it_said(tmp_path)}") from None
    assert code == 128 + signal.SIGTERM, what_it_said(tmp_path)
    alive = [pid for pid in services if Path(f"/proc/{pid}").exists()]
    assert not alive, alive
    queues = subprocess.run(["rabbitmqctl", "list_queues", "name", "-q"], capture_output=True, text=True).stdout
    namespaces = {name.split(".")[0] for name in queues.split() if name.startswith("exp-")}
    log = (tmp_path / "exp" / "logs" / "controller.log").read_text()
    assert not any(namespace in log for namespace in namespaces), namespaces


def what_it_said(tmp_path: Path) -> str:
    """The runner's stderr and the last lines of each service's log."""
    parts = [(tmp_path / "stderr.txt").read_text()[-4000:]]
    for path in sorted((tmp_path / "exp" / "logs").glob("*.log")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
    return "\n".join(parts)
