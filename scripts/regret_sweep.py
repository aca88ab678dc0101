"""A policy's regret against the best fixed plan in hindsight, over many generated traces (issue 28).

    python scripts/regret_sweep.py --out DIR [--traces traces/generated.txt] [--jobs 2] [--only 703,704]

Each line of the traces file is one `hadis trace` command's arguments (`traces/generated.txt`: the 74
on/off and MMPP traces of docs/experiments.md, tuned on; `traces/generated-holdout.txt`: 24 more, held
out, to check a change on). For each, this makes the trace, then runs
`hadis simulate` with the policy (hadis by default) and with best-static, both without the oracle's
bound (`--no-oracle`: the sweep takes minutes, not half an hour), `--jobs` at a time. It writes
DIR/regret.csv (one row per trace), DIR/regret.png (each trace's regret in FID and in violations,
the issue's target shaded) and prints a summary: how many traces are over the target (more than
best-static's violations + 0.5 pp or its FID + 0.1), the mean FID minus best-static's, the mean
violations and the worst misses. The runs stay in DIR/<trace>/<policy>/; `--skip-done` keeps those
that have a report.json. About 6 minutes for the 74 traces on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# The target: no more than best-static's violations + 0.5 pp, its mean FID + 0.1.
TARGET_PP, TARGET_FID = 0.5, 0.1


@dataclass(frozen=True)
class Row:
    name: str
    command: str
    violations_pct: float
    fid: float | None
    static_violations_pct: float
    static_fid: float | None

    @property
    def regret_pp(self) -> float:
        return self.violations_pct - self.static_violations_pct

    @property
    def regret_fid(self) -> float | None:
        return None if self.fid is None or self.static_fid is None else self.fid - self.static_fid

    @property
    def over(self) -> bool:
        return self.regret_pp > TARGET_PP or (self.regret_fid is not None and self.regret_fid > TARGET_FID)


def trace_commands(path: Path) -> list[tuple[str, str]]:
    """(name, arguments) per non-comment line: the name is the kind and the seed (`on-off-703`)."""
    commands = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        seed = words[words.index("--seed") + 1] if "--seed" in words else str(len(commands))
        commands.append((f"{words[0]}-{seed}", line))
    return commands


def trace_arguments(command: str, trace: Path) -> list[str]:
    """The `hadis` arguments that make one line's trace at `trace` (run_trace runs them; the tests
    parse them, so that a line the command refuses is caught without running the sweep)."""
    return ["trace", *shlex.split(command), "--out", str(trace)]


def run_trace(name: str, command: str, args: argparse.Namespace, hadis: str) -> Row:
    """Make the trace, then simulate the policy and best-static on it (each skipped when done)."""
    out = Path(args.out)
    trace = out / "traces" / f"{name}.txt"
    if not trace.exists():
        trace.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([hadis, *trace_arguments(command, trace)], check=True,
                       stdout=subprocess.DEVNULL)
    reports = {}
    for policy in (args.policy, "best-static"):
        run = out / name / policy
        if not (args.skip_done and (run / "report.json").exists()):
            subprocess.run([hadis, "simulate", "--trace", str(trace), "--policy", policy, "--gpus", str(args.gpus),
                            "--profile", args.profile, "--slo", str(args.slo), "--no-oracle", "--out", str(run)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reports[policy] = json.loads((run / "report.json").read_text())
    mine, static = reports[args.policy], reports["best-static"]
    return Row(name, command, mine["slo_violation_ratio"] * 100, mine["mean_fid"],
               static["slo_violation_ratio"] * 100, static["mean_fid"])


def summary(rows: list[Row]) -> list[str]:
    """What the sweep says, in a few lines."""
    regrets = [row.regret_fid for row in rows if row.regret_fid is not None]
    over = [row for row in rows if row.over]
    worst = sorted(rows, key=lambda row: row.violations_pct, reverse=True)[:4]
    lines = [f"{len(over)} of {len(rows)} over the target (best-static + {TARGET_PP} pp, + {TARGET_FID} FID)",
             f"mean FID minus best-static: {sum(regrets) / max(len(regrets), 1):+.3f}",
             f"mean violations: {sum(row.violations_pct for row in rows) / max(len(rows), 1):.3f} %",
             "worst misses: " + ", ".join(f"{row.name} {row.violations_pct:.2f} %" for row in worst)]
    if over:
        lines.append("over: " + ", ".join(f"{row.name} ({row.regret_pp:+.2f} pp, {fmt(row.regret_fid, '+.2f')} FID)"
                                          for row in over))
    return lines


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trace", "command", "violations_pct", "mean_fid", "best_static_violations_pct",
                         "best_static_mean_fid", "regret_pp", "regret_fid", "over_target"])
        for row in rows:
            writer.writerow([row.name, row.command, f"{row.violations_pct:.4f}", row.fid,
                             f"{row.static_violations_pct:.4f}", row.static_fid, f"{row.regret_pp:.4f}",
                             row.regret_fid, int(row.over)])


def plot(path: Path, rows: list[Row], policy: str) -> None:
    """Each trace's regret: FID across, violations up; inside the shaded corner is within the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(row, row.regret_fid) for row in rows if row.regret_fid is not None]
    xs = [x for _, x in shown]
    ys = [row.regret_pp for row, _ in shown]
    left, right = min(xs + [-0.5]) - 0.1, max(xs + [TARGET_FID]) + 0.25
    bottom, top = min(ys + [-0.5]) - 0.1, max(ys + [TARGET_PP]) + 0.2
    figure, axes = plt.subplots(figsize=(9, 6))
    axes.fill_between([left, TARGET_FID], bottom, TARGET_PP, color="tab:green", alpha=0.08, label="within the target")
    colours = ["tab:red" if row.over else "tab:blue" for row, _ in shown]
    axes.scatter(xs, ys, c=colours, s=22)
    for row, x in shown:
        if row.over:  # the name and the seed, slanted: several share the zero-violations row
            axes.annotate(row.name, (x, row.regret_pp), fontsize=7, rotation=35,
                          xytext=(3, 3), textcoords="offset points")
    axes.set_xlim(left, right)
    axes.set_ylim(bottom, top)
    axes.legend(loc="lower right")
    axes.set_xlabel("mean FID minus best-static's (lower is better)")
    axes.set_ylabel("violations minus best-static's (pp)")
    over = sum(row.over for row in rows)
    axes.set_title(f"{policy} against the best fixed plan in hindsight: {over} of {len(rows)} traces over the target")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--traces", default="traces/generated.txt", help="one `hadis trace` command per line")
    parser.add_argument("--policy", default="hadis")
    parser.add_argument("--gpus", type=int, default=16)
    parser.add_argument("--profile", default="paper-l40s-x10")
    parser.add_argument("--slo", type=float, default=6.0)
    parser.add_argument("--jobs", type=int, default=2, help="traces at once (default 2)")
    parser.add_argument("--only", help="comma-separated names or seeds (on-off-703 or 703): those traces only")
    parser.add_argument("--skip-done", action="store_true", help="keep runs that already have a report.json")
    args = parser.parse_args(argv)
    commands = trace_commands(Path(args.traces))
    if args.only:
        wanted = set(args.only.split(","))
        commands = [(name, command) for name, command in commands
                    if name in wanted or name.rsplit("-", 1)[-1] in wanted]
    if not commands:
        parser.error(f"no traces to run in {args.traces}")
    hadis = str(Path(sys.executable).parent / "hadis")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started, rows = time.monotonic(), []
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        futures = [pool.submit(run_trace, name, command, args, hadis) for name, command in commands]
        for index, future in enumerate(futures, start=1):
            row = future.result()
            rows.append(row)
            print(f"[{index}/{len(futures)}] {row.name}: {row.violations_pct:.2f} % / {fmt(row.fid)} against "
                  f"best-static {row.static_violations_pct:.2f} % / {fmt(row.static_fid)}"
                  f"{'  over' if row.over else ''} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    write_csv(Path(args.out) / "regret.csv", rows)
    plot(Path(args.out) / "regret.png", rows, args.policy)
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
