"""scripts/regret_sweep.py on two short generated traces: the traces made from their commands, each
policy run through `hadis simulate --no-oracle`, the table, the figure and the summary."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from shared import cli

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "regret_sweep.py"
sys.path.insert(0, str(SCRIPT.parent))

import regret_sweep  # noqa: E402


def test_the_sweep_writes_each_traces_regret_and_a_summary(tmp_path, capsys):
    traces = tmp_path / "traces.txt"
    traces.write_text("# two short ones\n"
                      "on-off --mean 2 --peak-to-mean 10 --off 20 --duration 60 --seed 1\n"
                      "mmpp --rates 1,8 --holding 20 --duration 60 --seed 2\n")
    out = tmp_path / "sweep"
    assert regret_sweep.main(["--out", str(out), "--traces", str(traces), "--jobs", "2"]) == 0
    with open(out / "regret.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trace"] for row in rows] == ["on-off-1", "mmpp-2"]
    for row in rows:
        report = json.loads((out / row["trace"] / "hadis" / "report.json").read_text())
        static = json.loads((out / row["trace"] / "best-static" / "report.json").read_text())
        assert float(row["regret_fid"]) == pytest.approx(report["mean_fid"] - static["mean_fid"])
        assert report["oracle_fid"] is None and report["oracle_gain_share"] is None  # --no-oracle
        assert static["notes"]["sweep"]
    assert (out / "regret.png").stat().st_size > 10_000
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0].endswith("of 2 over the target (best-static + 0.5 pp, + 0.1 FID)")
    assert "[2/2]" in printed.err
    assert regret_sweep.main(["--out", str(out), "--traces", str(traces), "--only", "2", "--skip-done"]) == 0
    with open(out / "regret.csv", newline="") as handle:
        assert [row["trace"] for row in csv.DictReader(handle)] == ["mmpp-2"]


def test_a_row_is_over_the_target_past_either_bound():
    row = regret_sweep.Row("t", "", 0.6, 21.0, 0.0, 21.0)
    assert row.over and row.regret_pp == pytest.approx(0.6)
    assert not regret_sweep.Row("t", "", 0.4, 21.05, 0.0, 21.0).over
    assert regret_sweep.Row("t", "", 0.0, 21.2, 0.0, 21.0).over


def test_no_oracle_is_refused_with_the_oracle(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["simulate", "--trace", "traces/bursty_p30.txt", "--policy", "oracle", "--no-oracle", "--gpus", "16",
                  "--profile", "paper-l40s-x10", "--slo", "6", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "--no-oracle" in capsys.readouterr().err


def test_the_held_out_traces_are_valid_commands_that_share_nothing_with_the_tuned_ones():
    """traces/generated-holdout.txt checks a change tuned on traces/generated.txt: a trace in both,
    or one the generator refuses, would make it no check at all."""
    root = SCRIPT.parents[1] / "traces"
    tuned = regret_sweep.trace_commands(root / "generated.txt")
    held = regret_sweep.trace_commands(root / "generated-holdout.txt")
    assert len(held) >= 20
    assert not {name for name, _ in held} & {name for name, _ in tuned}
    assert not {command for _, command in held} & {command for _, command in tuned}
    parser = cli.build_parser()
    for _, command in held:
        args = parser.parse_args(regret_sweep.trace_arguments(command, Path("/dev/null")))
        assert args.command == "trace"
