"""Every policy on one trace, then the comparison table and figures (`hadis compare`).

    python scripts/compare.py --mode experiment --trace T --profile P --gpus N --slo S --out DIR
    python scripts/compare.py --mode simulate ... [--scale K]
    python scripts/compare.py --mode simulate --policies hadis,diffserve,best-static,oracle ...

best-static (the best fixed plan in hindsight) and oracle (the bound on any policy) are simulate-only:
`hadis simulate` computes them, `hadis experiment` has nothing to run for them.

Each policy's run goes to DIR/<policy>/; DIR/comparison.md, comparison_bars.png and
comparison_timeline.png come last. A run that fails is reported and the others go on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from shared.commands.experiment import POLICY_CHOICES, SIMULATE_ONLY
from shared.policies.catalog import COMPARED as POLICIES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["experiment", "simulate"], required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--gpus", type=int, required=True)
    parser.add_argument("--slo", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: all)")
    parser.add_argument("--skip-done", action="store_true", help="keep runs that already have a report.json")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1). Each experiment has its own namespace; at a few jobs/s, "
                             "as trace_1_6qps in real time, they barely load the machine, at tens of jobs/s they "
                             "compete for its CPUs and the results say more about the machine than the policy")
    args, extra = parser.parse_known_args()
    policies = args.policies.split(",")
    known = POLICY_CHOICES + (SIMULATE_ONLY if args.mode == "simulate" else [])
    unknown = [policy for policy in policies if policy not in known]
    if unknown:
        only = [policy for policy in unknown if policy in SIMULATE_ONLY]
        parser.error(f"{', '.join(only)}: simulate only (--mode simulate)" if only
                     else f"unknown policies {', '.join(unknown)}; known: {', '.join(known)}")
    hadis = str(Path(sys.executable).parent / "hadis")
    commands = {}
    for policy in policies:
        out = Path(args.out) / policy
        if args.skip_done and (out / "report.json").exists():
            continue
        commands[policy] = [hadis, args.mode, "--trace", args.trace, "--policy", policy, "--gpus", str(args.gpus),
                            "--profile", args.profile, "--slo", str(args.slo), "--out", str(out), *extra]
    failed = run_all(commands, args.jobs)
    subprocess.run([hadis, "compare", args.out], check=True)
    print((Path(args.out) / "comparison.md").read_text())
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_all(commands: dict[str, list[str]], jobs: int) -> list[str]:
    """Run each policy's command, `jobs` at a time; the policies whose run failed. A run's own
    output goes to its folder; this prints when each starts and ends."""
    failed: list[str] = []
    pending = list(commands.items())
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            policy, command = pending.pop(0)
            print(f"== {policy}: {' '.join(command)}", file=sys.stderr, flush=True)
            running[policy] = (subprocess.Popen(command, stdout=subprocess.DEVNULL), time.monotonic())
        time.sleep(0.2)
        for policy, (process, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[policy]
            print(f"== {policy}: exit {process.returncode} in {time.monotonic() - started:.0f} s", file=sys.stderr,
                  flush=True)
            if process.returncode != 0:
                failed.append(policy)
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
