"""The fault run of `make test-compose` (scripts/compose/test_compose.sh): steady load from the host
through the compose stack's published ports while, one after the other, a worker container, the
judge and the RabbitMQ container are killed (`docker kill`) and Redis is restarted
(`docker compose restart redis`), and the router crashes (kill -9 of its container's process 1,
which its `restart:` policy must repair); then every job must end `done`.

A killed container comes back by its `restart:` policy; when the engine does not restart it (Engine
20.10 counts a `docker kill` as a manual stop: no restart) the run starts it, and says so.

Last line: `compose_test healthy=<n>/<n> done=<n> of <n> lost=<n>`; exit 1 unless every job is done.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # scripts/ (chaos's helpers), then this checkout

from chaos import SteadyLoad, Timeline, account, report_problems  # noqa: E402
from shared.client import Client  # noqa: E402
from shared.schemas import JobState  # noqa: E402
from shared.settings import Settings  # noqa: E402


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def container_of(project: str, service: str) -> str:
    """The id of the service's (first) container in the compose project."""
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                 "--filter", f"label=com.docker.compose.service={service}").split()
    if not ids:
        raise SystemExit(f"no container for service {service} in project {project}")
    return ids[0]


async def kill_container(project: str, service: str, say: Timeline, client: Client, died: set[int]) -> None:
    """docker kill, then wait (5 s) for the restart policy to bring it back, else start it. Killing
    an agent's container kills its workers: their pids (as their claims name them) go to `died`."""
    container = container_of(project, service)
    if service.startswith("agent"):
        died.update(int(worker["pid"]) for worker in await client.store.workers() if "pid" in worker)
    docker("kill", container)
    say(f"docker kill {service}")
    for _ in range(10):
        await asyncio.sleep(0.5)
        if docker("inspect", "-f", "{{.State.Running}}", container) == "true":
            say(f"{service} restarted by its restart policy")
            return
    docker("start", container)
    say(f"{service} not restarted by the engine after docker kill: docker start")


async def crash_container(project: str, service: str, say: Timeline) -> None:
    """kill -9 of the container's first process from the host: a crash, which its `restart:` policy
    (unless-stopped) must repair by itself within 30 s."""
    container = container_of(project, service)
    restarts = docker("inspect", "-f", "{{.RestartCount}}", container)
    subprocess.run(["kill", "-9", docker("inspect", "-f", "{{.State.Pid}}", container)], check=True)
    say(f"kill -9 of {service}'s process 1 (a crash)")
    for _ in range(60):
        await asyncio.sleep(0.5)
        if docker("inspect", "-f", "{{.State.Running}} {{.RestartCount}}", container) != f"true {restarts}":
            if docker("inspect", "-f", "{{.State.Running}}", container) == "true":
                say(f"{service} restarted by its restart policy")
                return
    raise SystemExit(f"{service} was not restarted by its restart policy within 30 s")


async def restart_redis(compose: list[str], say: Timeline) -> None:
    say("docker compose restart redis")
    await asyncio.to_thread(subprocess.run, [*compose, "restart", "redis"], check=True, capture_output=True)
    say("redis restarted")


async def faults(args: argparse.Namespace, compose: list[str], say: Timeline, client: Client, died: set[int]) -> None:
    """The faults, spread over the load (none in its last quarter, so each is seen through)."""
    steps = [lambda service=service: kill_container(args.project, service, say, client, died) for service in args.kill]
    steps += [lambda service=service: crash_container(args.project, service, say) for service in args.crash]
    steps.append(lambda: restart_redis(compose, say))
    gap = args.seconds * 0.75 / (len(steps) + 1)
    for step in steps:
        await asyncio.sleep(gap)
        await step()


async def run(args: argparse.Namespace) -> int:
    say = Timeline()
    settings = Settings(amqp_url=args.amqp_url, redis_url=args.redis_url, namespace=args.namespace,
                        publish_timeout_s=60.0)
    compose = ["docker", "compose", "--project-name", args.project, *args.compose_args]
    client = await Client.open(settings)
    try:
        load = SteadyLoad(client, rate_qps=args.rate, give_up_s=120.0, say=say, slo_s=args.slo)
        say(f"{args.seconds:.0f} s of load at {args.rate} jobs/s; faults: kill {', '.join(args.kill)}, "
            f"crash {', '.join(args.crash)}, restart redis")
        died: set[int] = set()
        await asyncio.gather(load.run(seconds=args.seconds, prefix="compose"), faults(args, compose, say, client, died))
        say(f"load over: {len(load.jobs)} submitted, {len(load.refused)} refused, {load.retried} retried")
        result = await account(load, died, args.timeout, say)
    finally:
        await client.close()
    outcome = result.outcome
    report_problems(result, say)
    done = outcome.count(JobState.done)
    total = len(outcome.records) + len(load.refused)
    print(f"{outcome} refused={len(load.refused)}")
    print(f"compose_test healthy={args.healthy} done={done} of {total} lost={outcome.lost + len(load.refused)}",
          flush=True)
    return 0 if done == total and total > 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", required=True, help="COMPOSE_PROJECT_NAME of the stack")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--namespace", default="hadis")
    parser.add_argument("--healthy", default="?", help="healthy/total services after up --wait (for the last line)")
    parser.add_argument("--kill", nargs="+", default=["agent-cpu", "quality-judge-cpu", "rabbitmq"],
                        help="services whose container is killed, in order")
    parser.add_argument("--crash", nargs="*", default=["router"],
                        help="services whose container's process 1 is killed from the host (restart policy)")
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="how long the load lasts (five faults, one every 11 s, none in the last quarter)")
    parser.add_argument("--rate", type=float, default=1.0, help="jobs per second")
    # The run asks whether kills lose or repeat a job, not what the stack serves within the deployed
    # SLO: that depends on what else the machine runs (CI runs the test tiers beside this one, and at
    # a load of 10 on 2 cores the tiny CPU models served 0.2 jobs/s). So each job gets a long
    # objective, and every job must still end done.
    parser.add_argument("--slo", type=float, default=600.0, help="each job's latency objective (s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the wait for terminal states")
    parser.add_argument("compose_args", nargs="*", help="after --: the compose flags (-f, --env-file, --profile)")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
