"""Every policy on one trace, then the comparison table and figures (`hadis compare`).

    python scripts/compare.py --mode experiment --trace T --profile P --gpus N --slo S --out DIR
    python scripts/compare.py --mode simulate ... [--scale K]

Each policy's run goes to DIR/<policy>/; DIR/comparison.md, comparison_bars.png and
comparison_timeline.png come last. A run that fails is reported and the others go on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from shared.policies.control import COMPARED as POLICIES


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
    args, extra = parser.parse_known_args()
    hadis = str(Path(sys.executable).parent / "hadis")
    failed = []
    for policy in args.policies.split(","):
        out = Path(args.out) / policy
        if args.skip_done and (out / "report.json").exists():
            continue
        started = time.monotonic()
        command = [hadis, args.mode, "--trace", args.trace, "--policy", policy, "--gpus", str(args.gpus),
                   "--profile", args.profile, "--slo", str(args.slo), "--out", str(out), *extra]
        print(f"== {policy}: {' '.join(command)}", file=sys.stderr, flush=True)
        result = subprocess.run(command, stdout=subprocess.DEVNULL)
        print(f"== {policy}: exit {result.returncode} in {time.monotonic() - started:.0f} s", file=sys.stderr,
              flush=True)
        if result.returncode != 0:
            failed.append(policy)
    subprocess.run([hadis, "compare", args.out], check=True)
    print((Path(args.out) / "comparison.md").read_text())
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
