"""`make chaos`: a few hundred jobs through the real services (emulated backend) while random
services are killed with SIGKILL and restarted; then every job's history is checked.

Last line: `lost=<n> duplicated=<n> failed=<n> of <submitted>`; exit 1 unless lost = duplicated = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid

from shared.client import Client
from shared.faults import Load, cluster
from shared.schemas import JobState
from shared.settings import Settings

CHAOS_ENV = {
    "HADIS_BACKEND": "emulated",
    "HADIS_JUDGE_BACKEND": "emulated",
    "HADIS_PROFILE": "paper-l40s-x10",
    "HADIS_TIME_SCALE": "2",  # batches of 0.4-0.5 s, so kills land mid-batch
    "HADIS_PLAN_R": "0.2",
    "HADIS_PLAN_D": "0.2",
    "HADIS_SLO_S": "120",
    "HADIS_LOG_LEVEL": "error",
    "HADIS_LOG_FORMAT": "json",
}


async def unleash(running, kills: int, rng: random.Random, started: float) -> None:
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        victim = rng.choice(sorted(running.children))
        running.kill(victim)
        down_s = rng.uniform(0.2, 2.0)
        print(f"  t={time.monotonic() - started:5.1f}s kill -9 {victim}, back in {down_s:.1f} s", flush=True)
        await asyncio.sleep(down_s)
        running.start(victim)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    rng = random.Random(args.seed)
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            load = Load(client, rate_qps=args.rate)
            started = time.monotonic()
            print(f"submitting {args.jobs} jobs at {args.rate} jobs/s, {args.kills} kills", flush=True)
            await asyncio.gather(load.run(seconds=args.jobs / args.rate), unleash(running, args.kills, rng, started))
            print("waiting for every job to reach a terminal state ...", flush=True)
            outcome = await load.outcome(timeout_s=args.timeout)
    finally:
        await client.close()
    print(f"done={outcome.count(JobState.done)} expired={outcome.count(JobState.expired)}")
    print(f"lost={outcome.lost} duplicated={outcome.duplicated} failed={outcome.count(JobState.failed)} "
          f"of {len(outcome.records)}")
    return 0 if outcome.lost == 0 and outcome.duplicated == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=6.0, help="jobs per second")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the wait for terminal states")
    args = parser.parse_args()
    os.environ.update(CHAOS_ENV, HADIS_NAMESPACE=f"chaos{uuid.uuid4().hex[:6]}")
    sys.exit(asyncio.run(run(args, Settings())))


if __name__ == "__main__":
    main()
