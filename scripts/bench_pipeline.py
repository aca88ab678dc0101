"""`make bench-pipeline`: the serving overhead of the five services, measured on this machine.

The emulated backend with zero latency (HADIS_TIME_SCALE=0) and the emulated judge, so every
second measured is the system's own: broker, store, routing, batching, encoding.

1. raw broker rate: publish (with confirms) and consume N messages through one quorum queue;
2. saturation: a backlog of N jobs queued before the five services (separate processes)
   start; jobs/s from the router's first record to the last terminal state;
3. added latency at a paced 100 jobs/s: p50 / p99 of submit -> done;
4. lost: jobs without a terminal record at the end (must be 0).

Phases 2-4 run once per event loop of --loops (asyncio's own, then uvloop, every service's default
where installed), side by side in one run, then once more with two routers and two judges
(competing consumers). Last lines: `broker_use <ratio>` and `pipeline_jobs_per_s <number>`, for the
last loop with one replica of each service.

--profile DIR: every service process runs under cProfile (HADIS_CPU_PROFILE_DIR) and the script
prints, per service, its CPU per job and the functions it spends it in. cProfile slows the services
down: a profiled run's rates are not comparable with an unprofiled one's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np

from shared import supervisor
from shared.bus import Bus
from shared.client import Client
from shared.errors import Disposition
from shared.reference import prompts
from shared.schemas import Job
from shared.settings import Settings

SERVICE_ENV = {
    "HADIS_API_PORT": "0",  # the stack's api listens on a port of its own: nothing here uses it
    "HADIS_BACKEND": "emulated",
    "HADIS_JUDGE_BACKEND": "emulated",
    "HADIS_PROFILE": "paper-l40s-x10",
    "HADIS_TIME_SCALE": "0",
    "HADIS_PLAN_R": "0.2",
    "HADIS_PLAN_D": "0.3",
    "HADIS_PLAN_LIGHT_BATCH": "32",
    "HADIS_PLAN_HEAVY_BATCH": "32",
    "HADIS_BATCH_WAIT_MS": "5",
    "HADIS_LOG_LEVEL": "warning",
    "HADIS_LOG_FORMAT": "json",
}
# Per job: ingress, tier, judge for the light share (1 - r), heavy again for escalations (1 - r) d.
MESSAGES_PER_JOB = 1 + 1 + 0.8 + 0.8 * 0.3


async def raw_broker_rate(settings: Settings, count: int) -> float:
    bus = await Bus.connect(settings)
    queue = bus.queues.judge
    received = 0
    all_received = asyncio.Event()

    async def on_delivery(delivery) -> None:
        nonlocal received
        await delivery.settle(Disposition.ack)
        received += 1
        if received == count:
            all_received.set()

    consumer = await bus.consume(queue, on_delivery, prefetch=256)
    body = Job(prompt="a red bicycle").model_dump_json().encode()
    started = time.perf_counter()
    for start in range(0, count, 256):
        await asyncio.gather(*(bus.publish(queue, body) for _ in range(min(256, count - start))))
    await all_received.wait()
    elapsed = time.perf_counter() - started
    await consumer.cancel()
    await bus.delete_namespace()
    await bus.close()
    return count / elapsed


def make_jobs(count: int) -> list[Job]:
    texts = prompts()
    return [Job(prompt=texts[i % len(texts)], seed=i) for i in range(count)]


async def wait_terminal(client: Client, jobs: list[Job], since_id: str, timeout_s: float) -> list:
    """The records of the jobs that reached a terminal state (one stream reader, not a waiter per job)."""
    finished = await client.store.wait_many([job.job_id for job in jobs], since_id, timeout_s)
    return [await client.status(job_id) for job_id in finished]


async def prefill(settings: Settings, count: int) -> tuple[list[Job], str]:
    """Queue the saturation jobs before the services start, so the measurement is the services
    draining a backlog, not this process publishing (it shares the same two cores)."""
    client = await Client.open(settings)
    try:
        jobs = make_jobs(count)
        since_id = await client.store.last_event_id()
        for start in range(0, count, 500):
            await asyncio.gather(*(client.submit(job) for job in jobs[start:start + 500]))
        return jobs, since_id
    finally:
        await client.close()


async def saturation(client: Client, jobs: list[Job], since_id: str) -> tuple[float, int]:
    """Jobs/s from the router's first record to the last terminal state."""
    finished = await wait_terminal(client, jobs, since_id, timeout_s=600)
    first_queued = min(record.history[0].at for record in finished)
    last_done = max(record.history[-1].at for record in finished)
    return len(finished) / (last_done - first_queued), len(jobs) - len(finished)


async def paced_latency(client: Client, rate: float, seconds: float) -> tuple[np.ndarray, int]:
    jobs = make_jobs(int(rate * seconds))
    since_id = await client.store.last_event_id()
    started = time.perf_counter()
    submitted, publishing = [], []
    for index, job in enumerate(jobs):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        job = job.model_copy(update={"submitted_at": time.time()})
        submitted.append(job)
        publishing.append(asyncio.create_task(client.submit(job)))
    await asyncio.gather(*publishing)
    records = await wait_terminal(client, submitted, since_id, timeout_s=120)
    latencies = np.array([r.latency_s for r in records])
    return latencies, len(jobs) - len(latencies)


async def measure(args: argparse.Namespace, settings: Settings, backlog: list[Job], since_id: str) -> float:
    client = await Client.open(settings)
    try:
        jobs_per_s, lost_saturated = await saturation(client, backlog, since_id)
        latencies, lost_paced = await paced_latency(client, args.rate, args.seconds)
    finally:
        await client.close()
    print(f"saturation: {args.jobs} jobs, {jobs_per_s:.0f} jobs/s, lost {lost_saturated}")
    print(f"paced {args.rate:.0f} jobs/s for {args.seconds:.0f} s: added latency p50 "
          f"{np.percentile(latencies, 50) * 1000:.1f} ms, p99 {np.percentile(latencies, 99) * 1000:.1f} ms, "
          f"lost {lost_paced}")
    return jobs_per_s


async def delete_namespace(settings: Settings) -> None:
    client = await Client.open(settings)
    await client.delete_namespace()
    await client.close()


def service_children(replicas: int) -> list[supervisor.Child]:
    """The stack of `hadis serve all`, with `replicas` routers and judges."""
    children = supervisor.default_children()
    for name in ("router", "judge"):
        model = next(child for child in children if child.name == name)
        children += [supervisor.Child(f"{name}{index}", model.module, {key: value for key, value in model.env.items()
                                                                     if key != "HADIS_METRICS_PORT"})
                     for index in range(2, replicas + 1)]
    return children


def pipeline_rate(args: argparse.Namespace, settings: Settings, loop: str, replicas: int = 1) -> float:
    """Saturation and paced latency with every service on `loop` (HADIS_EVENT_LOOP), in a namespace of its own."""
    os.environ.update(HADIS_EVENT_LOOP=loop, HADIS_NAMESPACE=settings.namespace)
    backlog, since_id = asyncio.run(prefill(settings, args.jobs))
    children = service_children(replicas)
    for child in children:
        child.start()
    try:
        return asyncio.run(measure(args, settings, backlog, since_id))
    finally:
        supervisor.stop_all(children)
        asyncio.run(delete_namespace(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--raw-messages", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--loops", default="asyncio,uvloop",
                        help="the services' event loops, measured side by side; the last one's figures end the output")
    parser.add_argument("--replicas", type=int, default=2,
                        help="a last run with this many routers and judges (1: none)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="profile the services with cProfile into this directory and print where the time goes")
    args = parser.parse_args()

    namespace = f"bench{uuid.uuid4().hex[:6]}"
    os.environ.update(SERVICE_ENV, HADIS_NAMESPACE=namespace)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["HADIS_CPU_PROFILE_DIR"] = str(args.profile.resolve())
    settings = Settings()
    raw_rate = asyncio.run(raw_broker_rate(settings.model_copy(update={"namespace": namespace + "raw"}),
                                           args.raw_messages))
    print(f"raw broker: {raw_rate:.0f} msg/s (publish with confirms + consume + ack, one quorum queue)")

    rates = {}
    for loop in args.loops.split(","):
        print(f"the services on {loop}:")
        rates[loop] = pipeline_rate(args, settings.model_copy(update={"namespace": f"{namespace}{loop[:2]}"}), loop)
    if len(rates) > 1:
        first, *others = rates
        print("event loops: " + ", ".join(f"{loop} {rate:.0f} jobs/s" for loop, rate in rates.items()) + "; "
              + ", ".join(f"{loop}/{first} {rates[loop] / rates[first]:.2f}" for loop in others))
    last_loop = args.loops.split(",")[-1]
    if args.profile:
        print_profiles(args.profile, jobs=len(rates) * (args.jobs + int(args.rate * args.seconds)))
    elif args.replicas > 1:
        print(f"{args.replicas} routers and {args.replicas} judges, on {last_loop}:")
        replicated = pipeline_rate(args, settings.model_copy(update={"namespace": f"{namespace}rp"}), last_loop,
                                   replicas=args.replicas)
        print(f"replicas: {args.replicas} routers and judges {replicated:.0f} jobs/s, one of each "
              f"{rates[last_loop]:.0f} jobs/s; broker use {replicated * MESSAGES_PER_JOB / raw_rate:.2f}")
    jobs_per_s = rates[last_loop]
    ratio = jobs_per_s * MESSAGES_PER_JOB / raw_rate
    print(f"broker use: {jobs_per_s:.0f} jobs/s x {MESSAGES_PER_JOB:.2f} msg/job / {raw_rate:.0f} msg/s")
    print(f"broker_use {ratio:.2f}")
    print(f"pipeline_jobs_per_s {jobs_per_s:.0f}")


def print_profiles(directory: Path, jobs: int, top: int = 12) -> None:
    """Per service (all its processes together): CPU seconds per job (process time), and the
    functions with the most time of their own."""
    by_service: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(directory.glob("*.prof")):
        by_service[path.stem.rsplit("-", 1)[0]].append(path)
    for service, paths in sorted(by_service.items()):
        stats = pstats.Stats(*map(str, paths))
        total_s = stats.total_tt  # type: ignore[attr-defined]
        print(f"\n== {service} ({len(paths)} process{'es' if len(paths) > 1 else ''}): {total_s:.1f} s, "
              f"{total_s / jobs * 1000:.2f} ms per job (profiled)")
        rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
        for (filename, line, function), (_, calls, own_s, cumulative_s, _) in rows:
            where = f"{Path(filename).name}:{line}" if line else filename
            print(f"  {own_s:7.2f} s own {cumulative_s:7.2f} s cum {calls:>9} calls  {function}  {where}")


if __name__ == "__main__":
    main()
