"""`make chaos`: a few hundred jobs through the real services (emulated backend) while random
services are killed with SIGKILL and restarted, RabbitMQ is restarted once (stop_app, start_app)
and Redis is killed (kill -9) and restarted once; then every job's record and the event stream
are checked.

RabbitMQ is the machine's broker, restarted with `rabbitmqctl`; with HADIS_AMQP_URL pointing at
another and RABBITMQCTL set to the command that reaches it (see rabbitmqctl below), that one.
Redis here is a server of the run's own (a free port, a temp dir, the compose file's persistence:
append-only, fsync every second), never the machine's: that one is shared. The load keeps
publishing through every fault; a job whose publish the client gives up on (its own bound,
HADIS_PUBLISH_TIMEOUT_S) was never submitted: counted as refused, not as lost.

Duplicated: a job with more than one terminal transition, or whose work the event stream shows
was done twice (tests/faults/processes.py: double_work, told which pids were killed).

Last line: `lost=<n> duplicated=<n> failed=<n> of <submitted>`; exit 1 unless all three are 0.
The helpers here (timeline, steady load, broker and Redis faults) serve scripts/soak.py and
scripts/drill.py too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: tests.faults.processes

from shared.client import Client
from shared.errors import Overloaded, Unavailable
from shared.schemas import Job, JobState
from shared.settings import Settings
from tests.faults.processes import DoubleWork, Load, Outcome, RedisServer, cluster, read_all_events

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


class Timeline:
    """Progress lines, each with the wall clock and the seconds since the run began."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        print(f"[{stamp} t={time.monotonic() - self.started:6.1f}s] {message}", flush=True)


@dataclass
class SteadyLoad(Load):
    """Jobs at a steady rate that keeps going through outages: each publish is a task of its own,
    so one held up by a broker restart does not hold up the next. A job is submitted once the
    broker confirms it; a publish is retried (the same job) for `give_up_s` in all (0: only the
    client's own bound), then the job counts as refused (never submitted)."""

    give_up_s: float = 0.0
    slo_s: float | None = None  # each job's latency objective (None: the services' default)
    refused: list[Job] = field(default_factory=list)
    retried: int = 0
    say: Timeline | None = None

    async def run(self, seconds: float, prefix: str = "load") -> None:
        if not self.jobs:
            self.since_id = await self.client.store.last_event_id()
        started = time.monotonic()
        pending: list[asyncio.Task] = []
        for index in range(int(seconds * self.rate_qps)):
            delay = started + index / self.rate_qps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            job = Job(prompt=f"{prefix} {index}: a lighthouse on a cliff at dusk", seed=index, slo_s=self.slo_s)
            pending.append(asyncio.create_task(self.submit(job)))
        await asyncio.gather(*pending)

    async def submit(self, job: Job) -> None:
        give_up_at = time.monotonic() + self.give_up_s
        while True:
            try:
                await self.client.submit(job)
                self.jobs.append(job)
                return
            except (Unavailable, Overloaded) as error:
                if isinstance(error, Overloaded) or time.monotonic() >= give_up_at:
                    self.refused.append(job)
                    if self.say:
                        self.say(f"job {job.job_id} refused: {type(error).__name__}: {error}")
                    return
                self.retried += 1
                await asyncio.sleep(1.0)


def services_output(path: str) -> None:
    """Send what the services print (they inherit this process's stdout and stderr: their logs and
    aio-pika's reconnection noise) and this process's own stderr to `path`; this process's
    stdout, the timeline, stays on the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(1)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = os.fdopen(terminal, "w", buffering=1)


def run_main(main_coroutine, log: str | None) -> int:
    """Run the script's coroutine with the services' output in `log` (None: a temp file; "-": the
    terminal); an error of the script itself is printed on the terminal too."""
    if log != "-":
        path = log or tempfile.mkstemp(prefix="hadis-services-", suffix=".log")[1]
        print(f"the services' output: {path}", flush=True)
        services_output(path)
    try:
        return asyncio.run(main_coroutine)
    except BaseException:  # noqa: BLE001 - shown on the terminal, not only in the log
        print(traceback.format_exc(), flush=True)
        return 1


# Faults on the broker and the store.
def rabbitmqctl(*args: str) -> None:
    """rabbitmqctl against the machine's broker; $RABBITMQCTL, when set, is the command instead (words
    split as a shell would): another node's, such as `env HOME=DIR rabbitmqctl -n NODE` for a broker of
    a run's own that HADIS_AMQP_URL points at (tests/deploy/test_make_targets.py restarts its own)."""
    command = shlex.split(os.environ.get("RABBITMQCTL", "rabbitmqctl"))
    subprocess.run([*command, *args], check=True, capture_output=True, timeout=180)


async def restart_rabbitmq(say: Timeline, down_s: float) -> None:
    say("rabbitmqctl stop_app")
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    say(f"RabbitMQ stopped; start_app in {down_s:.0f} s")
    await asyncio.sleep(down_s)
    await asyncio.to_thread(rabbitmqctl, "start_app")
    await asyncio.to_thread(rabbitmqctl, "await_startup")
    say("RabbitMQ started again (await_startup returned)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OwnRedis(RedisServer):
    """The Redis of this chaos run (the machine's one is shared: never killed): a free port, a temp
    dir, and the compose file's persistence."""

    def __init__(self) -> None:
        super().__init__(tempfile.mkdtemp(prefix="hadis-chaos-redis-"), free_port())

    def kill9(self) -> int:
        pid = self.stop(signal.SIGKILL)
        assert pid is not None
        return pid

    def remove(self) -> None:
        self.stop(signal.SIGTERM)
        shutil.rmtree(self.directory, ignore_errors=True)


async def restart_redis(redis: OwnRedis, say: Timeline, down_s: float) -> None:
    pid = redis.kill9()
    say(f"kill -9 redis-server (pid {pid}, port {redis.port}); back in {down_s:.0f} s")
    await asyncio.sleep(down_s)
    await asyncio.to_thread(redis.start)
    say(f"redis-server restarted (pid {redis.process.pid if redis.process else None}) on the same port and dir")


# The accounting, with the evidence to print.
@dataclass
class Account:
    outcome: Outcome
    found: DoubleWork
    events: list[tuple[str, dict[str, str]]]

    def history(self, job_id: str) -> str:
        steps = []
        for _, event in self.events:
            if event.get("job_id") != job_id:
                continue
            step = event["state"] + (f"[{event['tier']}]" if event.get("tier") else "")
            if event.get("owner"):
                step += f" by {event['owner']}"
            if event.get("image"):
                step += f" +image:{event['image']}"
            steps.append(step)
        return " -> ".join(steps) or "(no events)"


async def account(load: Load, died_pids: set[int], timeout_s: float, say: Timeline) -> Account:
    ids = [job.job_id for job in load.jobs]
    say(f"waiting (at most {timeout_s:.0f} s) for {len(ids)} jobs to reach a terminal state ...")
    finished = await load.client.store.wait_many(ids, load.since_id, timeout_s)
    say(f"{len(finished)} of {len(ids)} terminal")
    records = [await load.client.status(job_id) for job_id in ids]
    events = await read_all_events(load.client.store, load.since_id)
    found = DoubleWork(died_pids).feed(events)
    return Account(Outcome(records, set(found.jobs)), found, events)


def report_problems(result: Account, say: Timeline, limit: int = 10) -> None:
    """Evidence for each job that went wrong: why, and its history from the event stream."""
    outcome = result.outcome
    problems: list[tuple[str, str]] = [(job_id, "duplicated: " + "; ".join(result.found.findings.get(job_id, [])
                                                                          or ["several terminal transitions"]))
                                       for job_id in outcome.duplicated_ids]
    for record in outcome.records:
        if record is None:
            continue
        if not record.state.terminal:
            problems.append((record.job_id, f"lost: still {record.state.value}"))
        elif record.state is JobState.failed:
            problems.append((record.job_id, f"failed: {record.error}"))
    missing = sum(1 for record in outcome.records if record is None)
    if missing:
        say(f"{missing} jobs have no record at all (lost)")
    for job_id, why in problems[:limit]:
        say(f"  job {job_id} {why}\n      events: {result.history(job_id)}")
    if len(problems) > limit:
        say(f"  ... and {len(problems) - limit} more")


# make chaos.
async def kill_services(running, kills: int, rng: random.Random, say: Timeline, killed: list[int]) -> None:
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        victim = rng.choice(sorted(running.children))
        pid = running.children[victim].process.pid
        running.kill(victim)
        killed.append(pid)
        down_s = rng.uniform(0.2, 2.0)
        say(f"kill -9 {victim} (pid {pid}), back in {down_s:.1f} s")
        await asyncio.sleep(down_s)
        running.start(victim)
        say(f"{victim} restarted (pid {running.children[victim].process.pid})")


async def at(delay_s: float, fault) -> None:
    await asyncio.sleep(delay_s)
    await fault


async def run(args: argparse.Namespace, settings: Settings, redis: OwnRedis) -> int:
    say = Timeline()
    rng = random.Random(args.seed)
    killed: list[int] = []
    # The client's own publish bound: how long a job is retried through an outage before it is refused.
    client = await Client.open(settings.model_copy(update={"publish_timeout_s": args.publish_timeout}))
    try:
        say(f"namespace {settings.namespace}, Redis of this run on port {redis.port} ({redis.directory})")
        async with cluster(settings, client) as running:
            say("services up (a first job done)")
            load = SteadyLoad(client, rate_qps=args.rate, say=say)
            seconds = args.jobs / args.rate
            say(f"submitting {args.jobs} jobs at {args.rate} jobs/s ({seconds:.0f} s), {args.kills} kills, "
                f"a RabbitMQ restart at {seconds * 0.35:.0f} s, a Redis kill -9 at {seconds * 0.7:.0f} s")
            await asyncio.gather(
                load.run(seconds=seconds),
                kill_services(running, args.kills, rng, say, killed),
                at(seconds * 0.35, restart_rabbitmq(say, args.broker_down)),
                at(seconds * 0.7, restart_redis(redis, say, args.redis_down)),
            )
            say(f"load over: {len(load.jobs)} submitted, {len(load.refused)} refused, {load.retried} retried")
            result = await account(load, set(killed), args.timeout, say)
    finally:
        await client.close()
    outcome = result.outcome
    report_problems(result, say)
    print(f"done={outcome.count(JobState.done)} expired={outcome.count(JobState.expired)} "
          f"refused={len(load.refused)} kills={len(killed)} killed_pids={sorted(killed)}")
    print(f"lost={outcome.lost} duplicated={outcome.duplicated} failed={outcome.count(JobState.failed)} "
          f"of {len(outcome.records)}", flush=True)
    return 0 if outcome.lost == 0 and outcome.duplicated == 0 and outcome.count(JobState.failed) == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=6.0, help="jobs per second")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--broker-down", type=float, default=4.0, help="seconds between stop_app and start_app")
    parser.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays dead")
    parser.add_argument("--publish-timeout", type=float, default=30.0,
                        help="the client's bound on one publish (through an outage) before a job is refused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="where the services' output goes (default: a temp file; -: the terminal)")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the wait for terminal states")
    args = parser.parse_args()
    redis = OwnRedis()
    redis.start()
    try:
        os.environ.update(CHAOS_ENV, HADIS_NAMESPACE=f"chaos{uuid.uuid4().hex[:6]}", HADIS_REDIS_URL=redis.url)
        code = run_main(run(args, Settings(), redis), args.log)
    finally:
        redis.remove()
    sys.exit(code)


if __name__ == "__main__":
    main()
