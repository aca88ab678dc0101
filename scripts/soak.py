"""`make soak`: steady load through the real services (emulated backend, as `make chaos`) for ten
minutes, with RabbitMQ restarted (stop_app, start_app) every two minutes; then every job must
end done, none worked on twice (tests/faults/processes.py: double_work).

The load keeps publishing through each restart; a job whose publish the client gives up on (after
--publish-timeout) was never submitted: counted as refused, not as lost. Redis is the machine's
(a namespace of the run's own, deleted at the end); RabbitMQ the machine's, or HADIS_AMQP_URL's
with RABBITMQCTL set to the command that restarts it (scripts/chaos.py: rabbitmqctl).

Last line: `lost=<n> duplicated=<n> failed=<n> of <submitted>`; exit 1 unless every job is done
and none duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.faults.processes

from chaos import (
    CHAOS_ENV,
    SteadyLoad,
    Timeline,
    account,
    report_problems,
    restart_rabbitmq,
    run_main,
)
from shared.client import Client
from shared.schemas import JobState
from shared.settings import Settings
from tests.faults.processes import cluster


async def restarts(say: Timeline, seconds: float, every_s: float, down_s: float) -> int:
    count, started = 0, time.monotonic()
    while True:
        next_at = started + (count + 1) * every_s
        if next_at >= started + seconds:  # none in the load's last moments: it would not be seen through
            return count
        await asyncio.sleep(next_at - time.monotonic())
        await restart_rabbitmq(say, down_s)
        count += 1


async def progress(load: SteadyLoad, say: Timeline, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        say(f"{len(load.jobs)} submitted, {len(load.refused)} refused so far")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    say = Timeline()
    client = await Client.open(settings.model_copy(update={"publish_timeout_s": args.publish_timeout}))
    try:
        say(f"namespace {settings.namespace}")
        async with cluster(settings, client) as running:
            say("services up (a first job done)")
            load = SteadyLoad(client, rate_qps=args.rate, say=say)
            seconds = args.minutes * 60
            say(f"{seconds:.0f} s of load at {args.rate} jobs/s, RabbitMQ restarted every {args.restart_every:.0f} s")
            reporter = asyncio.create_task(progress(load, say, 60.0))
            try:
                _, count = await asyncio.gather(load.run(seconds=seconds),
                                                restarts(say, seconds, args.restart_every, args.broker_down))
            finally:
                reporter.cancel()
            say(f"load over: {len(load.jobs)} submitted, {len(load.refused)} refused, {load.retried} retried, "
                f"{count} broker restarts")
            result = await account(load, set(), args.timeout, say)
            dead = [name for name, child in running.children.items() if child.process.poll() is not None]
            if dead:
                say(f"services not running at the end: {dead}")
    finally:
        await client.close()
    outcome = result.outcome
    report_problems(result, say)
    done = outcome.count(JobState.done)
    print(f"done={done} expired={outcome.count(JobState.expired)} refused={len(load.refused)} restarts={count}")
    print(f"lost={outcome.lost} duplicated={outcome.duplicated} failed={outcome.count(JobState.failed)} "
          f"of {len(outcome.records)}", flush=True)
    return 0 if done == len(outcome.records) and outcome.duplicated == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load lasts")
    parser.add_argument("--rate", type=float, default=4.0, help="jobs per second")
    parser.add_argument("--restart-every", type=float, default=120.0, help="seconds between RabbitMQ restarts")
    parser.add_argument("--broker-down", type=float, default=4.0, help="seconds between stop_app and start_app")
    parser.add_argument("--publish-timeout", type=float, default=60.0,
                        help="the client's bound on one publish (through an outage) before a job is refused")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the wait for terminal states")
    parser.add_argument("--log", help="where the services' output goes (default: a temp file; -: the terminal)")
    args = parser.parse_args()
    os.environ.update(CHAOS_ENV, HADIS_NAMESPACE=f"soak{uuid.uuid4().hex[:6]}")
    sys.exit(run_main(run(args, Settings()), args.log))


if __name__ == "__main__":
    main()
