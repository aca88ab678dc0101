import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.commands import plan

REPO = Path(__file__).resolve().parent.parent
REQUIRED = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch", "light_gpus", "heavy_gpus", "fid",
            "solve_ms")


def run_plan(argv: list[str], capsys) -> tuple[int, dict]:
    parser = argparse.ArgumentParser(prog="hadis")
    plan.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", *argv])
    code = args.handler(args)
    return code, json.loads(capsys.readouterr().out)


def test_plan_prints_the_decision(capsys):
    code, out = run_plan(["--profile", "paper-l40s-x10", "--gpus", "16", "--demand", "1", "--slo", "6"], capsys)
    assert code == 0
    assert set(REQUIRED) <= set(out)
    assert (out["light_model"], out["heavy_model"], out["feasible"]) == ("sd35-medium", "sd35-large", True)
    assert out["light_gpus"] + out["heavy_gpus"] <= 16


def test_plan_options(capsys):
    argv = ["--profile", "paper-l40s-x10", "--gpus", "16", "--demand", "100", "--slo", "6", "--margin", "0.1",
            "--queueing", "0.5", "--light-share", "all", "--pair", "sdxl-lightning:sd35-large-turbo"]
    code, out = run_plan(argv, capsys)
    assert code == 0
    assert (out["light_share"], out["margin"], out["queueing_s"]) == ("all", 0.1, 0.5)
    assert out["capacity_qps"] >= 110 * (1 - 1e-9)
    assert out["expected_latency_s"] + 0.5 <= 6


def test_overload_is_reported_not_raised(capsys):
    code, out = run_plan(["--profile", "paper-l40s-x10", "--gpus", "2", "--demand", "500", "--slo", "6"], capsys)
    assert code == 0 and out["feasible"] is False
    assert out["light_gpus"] + out["heavy_gpus"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--profile", "tiny-cpu"], "no Pareto table"),
    (["--profile", "no-such-profile"], "no profile"),
    (["--profile", "paper-l40s", "--pair", "sd35-large"], "LIGHT:HEAVY"),
])
def test_errors_are_json(argv, message, capsys):
    code, out = run_plan([*argv, "--gpus", "4", "--demand", "1", "--slo", "6"], capsys)
    assert code == 2 and message in out["error"]


def test_plan_runs_as_a_process():
    """The command works in a fresh interpreter (no state from the test session)."""
    script = ("import argparse, sys; from shared.commands import plan; p = argparse.ArgumentParser(); "
              "plan.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")
    done = subprocess.run([sys.executable, "-c", script, "plan", "--profile", "h200", "--gpus", "1024", "--demand",
                           "300", "--slo", "6"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["light_gpus"] + json.loads(done.stdout)["heavy_gpus"] <= 1024
