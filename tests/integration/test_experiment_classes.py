"""`hadis experiment --batch-jobs` end to end (docs/classes.md): a short trace through the real
services on two emulated GPUs while a batch backlog is submitted at its start; every batch job
served and reported in its class, the GPU-seconds each class used read from the workers' busy time."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson

HADIS = str(Path(sys.executable).parent / "hadis")


def test_a_batch_backlog_beside_a_trace_through_the_real_services(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("".join(f"{i * 250},{(i * 137) % 5000}\n" for i in range(24)))
    out = tmp_path / "run"
    command = [HADIS, "experiment", "--trace", str(trace), "--policy", "hadis", "--gpus", "2", "--profile",
               "paper-l40s-x10", "--slo", "6", "--out", str(out), "--plan-period", "2", "--dwell", "4",
               "--batch-jobs", "20", "--batch-slo-s", "30"]
    # A quarter of the profile's times: the run's batches are short, and so is the test.
    env = {**os.environ, "HADIS_TIME_SCALE": "0.25"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = orjson.loads(result.stdout)
    classes = report["classes"]
    assert report["submitted"] == classes["interactive"]["jobs"] == 24 and report["lost"] == 0
    assert classes["batch"]["jobs"] == 20 and classes["batch"]["lost"] == 0
    assert classes["batch"]["done"] + classes["batch"]["expired"] == 20 and classes["batch"]["done"] > 0
    assert classes["batch"]["mean_fid"] is not None and classes["batch_settings"]["slo_s"] == 30.0
    assert report["notes"]["batch_submitted"] == 20 and report["notes"]["busy_worker_processes"] >= 2
    seconds = classes["gpu_seconds"]
    assert seconds["interactive_gpu_s"] > 0 and seconds["batch_gpu_s_all"] > 0
    assert seconds["batch_use_of_idle"] is not None and 0 < seconds["batch_use_of_idle"] <= 1
    rows = list(csv.DictReader((out / "classes.csv").open()))
    assert rows and sum(int(row["batch_done"]) for row in rows) == classes["batch"]["done"]
    assert (out / "classes.png").read_bytes().startswith(b"\x89PNG")
    queues = subprocess.run(["rabbitmqctl", "list_queues", "name", "-q"], capture_output=True, text=True).stdout
    assert report["notes"]["namespace"] not in queues
