"""How long the planner takes to solve: p50 / p99 / max over many calls, for 16 and 1,024 GPUs at
several demands (the last of each is an overload, which takes the highest-capacity path).
Targets: <= 10 ms for 16 GPUs, <= 100 ms for 1,024 GPUs.

  .venv/bin/python scripts/bench_planner.py [--profile paper-l40s-x10] [--calls 2000] [--light-share routed]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.policies.planner import Planner, load_table
from shared.profiles import load_profile

DEMANDS = {16: (1, 5, 10, 20, 40, 100, 1000), 1024: (64, 320, 640, 1280, 2560, 6400, 64000)}


def measure(planner: Planner, demand: float, gpus: int, slo_s: float, calls: int) -> tuple[np.ndarray, object]:
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        decision = planner.plan(demand, gpus, slo_s)
        times[i] = (time.perf_counter() - started) * 1000.0
    return times, decision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper-l40s-x10")
    parser.add_argument("--slo", type=float, default=6.0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--light-share", choices=["routed", "all"], default="routed")
    args = parser.parse_args()

    started = time.perf_counter()
    planner = Planner(load_profile(args.profile), load_table(args.profile), light_share=args.light_share)
    setup_ms = (time.perf_counter() - started) * 1000.0
    print(f"profile {args.profile}, SLO {args.slo} s, light share {args.light_share}: {len(planner.rows)} table "
          f"rows x {len(planner.batch_sizes)}^2 batch pairs; set-up {setup_ms:.1f} ms (once, table load included)")
    print(f"{'gpus':>5} {'demand':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  plan")
    worst = {}
    for gpus, demands in DEMANDS.items():
        for demand in demands:
            times, decision = measure(planner, demand, gpus, args.slo, args.calls)
            p50, p99 = np.percentile(times, [50, 99])
            worst[gpus] = max(worst.get(gpus, 0.0), p99)
            plan = (f"{decision.light_model} -> {decision.heavy_model} r={decision.r:g} d={decision.d:g} "
                    f"b={decision.light_batch}/{decision.heavy_batch} "
                    f"gpus={decision.light_gpus}+{decision.heavy_gpus} "
                    f"FID {decision.fid:g}{'' if decision.feasible else ' (overload)'}")
            print(f"{gpus:>5} {demand:>7g} {p50:>7.3f} {p99:>7.3f} {times.max():>7.3f}  {plan}")
    for gpus, target in ((16, 10.0), (1024, 100.0)):
        print(f"worst p99 at {gpus} GPUs: {worst[gpus]:.3f} ms (target <= {target:g} ms)")


if __name__ == "__main__":
    main()
