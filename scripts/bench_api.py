"""`make bench-api`: what the HTTP api costs a submission, side by side with the AMQP front door and
with `make bench-pipeline`'s rate, in one run on this machine.

Two front doors to the same ingress queue, each measured in a namespace of its own:

* amqp: `Client.submit`, a persistent publish to `<ns>.requests` with the broker's confirm, what
  other backends and bench-pipeline's producers do;
* api: `POST /v1/jobs` to the api service, a process of its own (`python -m services.api`, as
  `hadis serve` runs it), from --concurrency httpx clients of one keep-alive connection each,
  with one key whose limits no run reaches (made by `hadis api-key create`): key check, rate
  limit and quota in Redis, the same publish with confirm, the `queued` record in Redis, then 202.

Nothing consumes the front-door namespaces: an accepted job is durable in the broker, which is all
either door promises, so the figures are the doors alone, not generation. The jobs wait in the
queue (bounded at 10,000,000 here, not 100,000) and are deleted with the namespace at the end.

1. saturation: --concurrency submissions in flight (default 64; that many HTTP connections)
   for --seconds after a warm-up; accepted jobs/s (confirms; 202s), and api / amqp;
2. paced: --rate jobs/s (default 100) for --paced-seconds, open loop: p50 / p99 of a submission
   (publish to confirm; request to 202); the HTTP hop's added latency is the api's percentile
   minus the amqp one (a difference of percentiles, not a percentile of differences);
3. pipeline: bench-pipeline's saturation (scripts/bench_pipeline.py: a backlog drained by every
   service, emulated models, zero latency), --pipeline-jobs jobs: the rate a front door must keep up
   with. `--pipeline-jobs 0` skips it.
4. baseline (with --baseline REV): the api's saturation, as in 1, of the revision REV (a `git worktree`
   of it in a temporary folder, run with this venv: scripts/checkout.py) and of the working tree, in
   --rounds alternating rounds (ABBA), each a fresh api process in a fresh namespace with a key its
   own code made; the medians and their ratio, working tree / REV: what the changes since REV cost
   a submission (issue 29: the tenants' budgets may cost at most 10 %).

Every process shares this machine's CPUs: the load generator (this process, one event loop),
the api, RabbitMQ and Redis, and whatever else runs; the CPU seconds each used in a phase are
printed with it.

Last lines: `api_accept_jobs_per_s`, `amqp_accept_jobs_per_s`, `api_ratio`, `pipeline_jobs_per_s`
(when measured), `http_hop_p50_ms`, `http_hop_p99_ms`; with --baseline, then
`api_accept_jobs_per_s_baseline`, `api_accept_jobs_per_s_worktree`, `api_accept_ratio_vs_baseline`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil

import checkout
from bench_pipeline import SERVICE_ENV, delete_namespace, prefill, saturation
from cpu_isolation import listening_pids, local_ports
from shared import supervisor
from shared.client import Client
from shared.errors import Overloaded
from shared.reference import prompts
from shared.schemas import Job
from shared.settings import Settings

Submit = Callable[[], Awaitable[bool]]  # submit the next job; True when accepted
# Limits no run reaches, as `hadis api-key create` options (those a revision lacks are left out): the
# image budget too (MB per image TTL), which 512x512 jobs at these rates would spend in seconds.
NO_LIMITS = {"rate": 100_000.0, "burst": 100_000, "max_active": 1_000_000, "image_mb": 1e9}
# Nothing drains the front doors' queues: room for a run's worth of jobs (the default, 100,000,
# is a few seconds of the AMQP door here), the same for every process that declares them.
QUEUE_MAX_LENGTH = 10_000_000
TENANT = "bench"
API_READY_S = 60.0


@dataclass
class Phase:
    """One measured phase: what was accepted, refused, how fast, and who used the CPU."""

    accepted: int
    refused: int
    seconds: float
    cpu: dict[str, float]

    @property
    def jobs_per_s(self) -> float:
        return self.accepted / self.seconds


class CpuMeter:
    """CPU seconds used by the processes that share the machine in a phase: this load generator,
    the api, and the local broker and store (when this user can see them)."""

    def __init__(self, settings: Settings, api_pid: int | None = None) -> None:
        urls = (settings.amqp_url.get_secret_value(), settings.redis_url.get_secret_value())
        found = listening_pids(local_ports(*urls))
        self.processes = {name: psutil.Process(pid) for pid, name in found.items()}
        self.processes["load generator"] = psutil.Process()
        if api_pid is not None:
            self.processes["api"] = psutil.Process(api_pid)

    def read(self) -> dict[str, float]:
        used = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                used[name] = times.user + times.system
            except psutil.Error:
                pass
        return used

    async def measure(self, run: Callable[[], Awaitable[tuple[int, int]]]) -> Phase:
        before, started = self.read(), time.perf_counter()
        accepted, refused = await run()
        seconds, after = time.perf_counter() - started, self.read()
        return Phase(accepted, refused, seconds, {name: after[name] - before[name] for name in after if name in before})


def cpu_line(phase: Phase) -> str:
    used = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in sorted(phase.cpu.items(), key=lambda i: -i[1]))
    return f"    CPU used in {phase.seconds:.1f} s on {os.cpu_count()} CPUs: {used}"


# ---- the two front doors ----------------------------------------------------------------------

def bodies() -> Callable[[], tuple[str, int]]:
    """The next job's prompt and seed: the reference prompts in turn, seeds counting up (the same
    jobs through either door)."""
    texts, count = prompts(), 0

    def next_job() -> tuple[str, int]:
        nonlocal count
        count += 1
        return texts[count % len(texts)], count
    return next_job


def amqp_submitter(client: Client) -> Submit:
    """Client.submit of a fresh Job (an id of its own, as a producer makes one per request)."""
    next_job = bodies()

    async def submit() -> bool:
        prompt, seed = next_job()
        try:
            await client.submit(Job(prompt=prompt, seed=seed))
        except Overloaded:
            return False
        return True
    return submit


def api_submitter(clients: list[httpx.AsyncClient]) -> Submit:
    """POST /v1/jobs with the Job contract's body (the api assigns the id), on a client that is
    not busy: one connection each, kept alive."""
    next_job, idle = bodies(), list(clients)

    async def submit() -> bool:
        prompt, seed = next_job()
        http = idle.pop() if idle else clients[seed % len(clients)]
        try:
            response = await http.post("/v1/jobs", json={"prompt": prompt, "seed": seed})
        finally:
            idle.append(http)
        return response.status_code == 202
    return submit


@contextlib.asynccontextmanager
async def http_clients(base: str, key: str, count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`count` clients of one keep-alive connection each. Not one client with `count` connections:
    httpx's pool scans every connection for every request, and at 64 its scans (about 20 ms of
    CPU a request here) would be the bottleneck, not the api."""
    async with contextlib.AsyncExitStack() as stack:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        yield [await stack.enter_async_context(httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30))
            for _ in range(count)]


async def saturate(submit: Submit, concurrency: int, seconds: float) -> tuple[int, int]:
    """`concurrency` loops submitting back to back until `seconds` have passed: (accepted, refused)."""
    give_up_at = time.perf_counter() + seconds
    counts = [0, 0]

    async def loop() -> None:
        while time.perf_counter() < give_up_at:
            counts[0 if await submit() else 1] += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return counts[0], counts[1]


async def paced(submit: Submit, rate: float, seconds: float) -> tuple[np.ndarray, int]:
    """An open loop at `rate` submissions/s: each one's latency (s) from its call to its answer, and
    how many were refused."""
    count, started = int(rate * seconds), time.perf_counter()
    latencies, refused = np.zeros(count), 0

    async def one(index: int) -> None:
        nonlocal refused
        called = time.perf_counter()
        if not await submit():
            refused += 1
        latencies[index] = time.perf_counter() - called

    tasks = []
    for index in range(count):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    return latencies, refused


@dataclass
class Door:
    """A front door's figures: saturation and the paced latencies."""

    name: str
    saturated: Phase
    latencies: np.ndarray
    paced_refused: int

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000.0)


async def measure_door(name: str, submit: Submit, meter: CpuMeter, args: argparse.Namespace) -> Door:
    """Warm up (connections, the key cache), saturate, then pace: one door's figures."""
    await saturate(submit, args.concurrency, args.warmup_seconds)
    saturated = await meter.measure(lambda: saturate(submit, args.concurrency, args.seconds))
    latencies, refused = await paced(submit, args.rate, args.paced_seconds)
    door = Door(name, saturated, latencies, refused)
    print(f"{name}: {saturated.accepted} accepted in {saturated.seconds:.1f} s = {saturated.jobs_per_s:.0f} jobs/s "
          f"({args.concurrency} in flight), {saturated.refused} refused")
    print(cpu_line(saturated))
    print(f"{name}: paced {args.rate:.0f} jobs/s for {args.paced_seconds:.0f} s: p50 {door.percentile_ms(50):.2f} ms, "
          f"p99 {door.percentile_ms(99):.2f} ms, {refused} refused")
    return door


async def amqp_door(settings: Settings, args: argparse.Namespace) -> Door:
    client = await Client.open(settings)
    try:
        return await measure_door("amqp", amqp_submitter(client), CpuMeter(settings), args)
    finally:
        await client.delete_namespace()
        await client.close()


# ---- the api, a process of its own ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_ready(base: str, child: supervisor.Child) -> None:
    give_up_at = time.monotonic() + API_READY_S
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        while True:
            if child.process is None or child.process.poll() is not None:
                raise SystemExit(f"the api exited (code {child.process and child.process.returncode}):\n"
                                 f"{log_tail(child)}")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > give_up_at:
                raise SystemExit(f"the api did not answer /healthz in {API_READY_S:.0f} s:\n{log_tail(child)}")
            await asyncio.sleep(0.2)


def log_tail(child: supervisor.Child) -> str:
    """The end of the api's log (its folder is temporary)."""
    try:
        return child.log_path.read_text(errors="replace")[-3000:] if child.log_path else ""
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def running_api(settings: Settings, log_dir: Path, folder: Path | None = None,
                      ) -> AsyncIterator[tuple[str, str, supervisor.Child]]:
    """The api of `folder`'s code (None: the working tree's) as a process of its own in the settings'
    namespace, with a key of its own making: (base URL, key, its child). At the end it is stopped
    and the namespace deleted, by the same code."""
    port = free_port()
    code = checkout.Code.at(folder, {
        **SERVICE_ENV, "HADIS_NAMESPACE": settings.namespace, "HADIS_API_HOST": "127.0.0.1",
        "HADIS_API_PORT": str(port), "HADIS_QUEUE_MAX_LENGTH": str(settings.queue_max_length)})
    key = await asyncio.to_thread(code.make_key, TENANT, NO_LIMITS)
    log_path = log_dir / f"api-{settings.namespace}.log"
    child = supervisor.Child("api", "services.api", {}, log_path=log_path)
    child.process = code.popen([sys.executable, "-m", "services.api"], log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, child)
        yield base, key, child
    finally:
        supervisor.stop_all([child])
        await asyncio.to_thread(code.delete_namespace)


async def api_door(settings: Settings, args: argparse.Namespace, log_dir: Path) -> Door:
    async with running_api(settings, log_dir) as (base, key, child), \
            http_clients(base, key, args.concurrency) as clients:
        meter = CpuMeter(settings, child.process.pid)
        return await measure_door("api", api_submitter(clients), meter, args)


async def api_saturated(settings: Settings, args: argparse.Namespace, log_dir: Path, folder: Path | None) -> Phase:
    """One api's accept rate at saturation (after the warm-up), as the api door's first phase."""
    async with running_api(settings, log_dir, folder) as (base, key, child), \
            http_clients(base, key, args.concurrency) as clients:
        submit = api_submitter(clients)
        await saturate(submit, args.concurrency, args.warmup_seconds)
        return await CpuMeter(settings, child.process.pid).measure(
            lambda: saturate(submit, args.concurrency, args.seconds))


# ---- bench-pipeline's rate ------------------------------------------------------------------

def pipeline_rate(namespace: str, jobs: int) -> float:
    """bench-pipeline's saturation figure: a backlog of `jobs`, then every service (`hadis serve
    all`'s children, the api included, on a free port) drains it."""
    os.environ.update(SERVICE_ENV, HADIS_NAMESPACE=namespace, HADIS_API_PORT=str(free_port()))
    settings = Settings()
    backlog, since_id = asyncio.run(prefill(settings, jobs))
    children = supervisor.default_children()
    for child in children:
        child.start()
    try:
        jobs_per_s, lost = asyncio.run(drain(settings, backlog, since_id))
    finally:
        supervisor.stop_all(children)
        asyncio.run(delete_namespace(settings))
    print(f"pipeline: {jobs} jobs drained by every service at {jobs_per_s:.0f} jobs/s, lost {lost} "
          "(bench-pipeline's saturation)")
    return jobs_per_s


async def drain(settings: Settings, backlog: list[Job], since_id: str) -> tuple[float, int]:
    client = await Client.open(settings)
    try:
        return await saturation(client, backlog, since_id)
    finally:
        await client.close()


# ---- the api against a baseline revision ------------------------------------------------------

@dataclass
class Comparison:
    """The api's accept rates at saturation, per round, of a baseline revision and of the working tree."""

    baseline: str  # the revision, described
    rates: dict[str, list[float]]  # "baseline", "worktree" -> jobs/s, one per round

    def median(self, which: str) -> float:
        return statistics.median(self.rates[which])

    @property
    def ratio(self) -> float:
        return self.median("worktree") / self.median("baseline")


async def compare(settings: Settings, args: argparse.Namespace, log_dir: Path, folder: Path, label: str,
                  ) -> Comparison:
    """--rounds of the api's saturation, the baseline's and the working tree's in turn, each in a fresh
    namespace with a fresh api process; every other round reverses the order (ABBA), so that a drift
    of the machine's load falls on both alike."""
    rates: dict[str, list[float]] = {"baseline": [], "worktree": []}
    for index in range(args.rounds):
        order: list[tuple[str, Path | None]] = [("baseline", folder), ("worktree", None)]
        for which, code in order[::-1] if index % 2 else order:
            namespace = f"{settings.namespace}{which[:4]}{index}"
            phase = await api_saturated(settings.model_copy(update={"namespace": namespace}), args, log_dir, code)
            rates[which].append(phase.jobs_per_s)
            print(f"round {index + 1}, {which} ({label if code else 'the working tree'}): {phase.accepted} accepted "
                  f"in {phase.seconds:.1f} s = {phase.jobs_per_s:.0f} jobs/s, {phase.refused} refused")
            print(cpu_line(phase))
    return Comparison(label, rates)


def summarise_comparison(comparison: Comparison) -> None:
    rounds = {which: ", ".join(f"{rate:.0f}" for rate in rates) for which, rates in comparison.rates.items()}
    print(f"api accepted jobs/s at saturation, medians of {len(comparison.rates['worktree'])} rounds: working tree "
          f"{comparison.median('worktree'):.0f} ({rounds['worktree']}), baseline {comparison.baseline} "
          f"{comparison.median('baseline'):.0f} ({rounds['baseline']})")
    print(f"api_accept_jobs_per_s_baseline {comparison.median('baseline'):.0f}")
    print(f"api_accept_jobs_per_s_worktree {comparison.median('worktree'):.0f}")
    print(f"api_accept_ratio_vs_baseline {comparison.ratio:.3f}")


# ---- the run ----------------------------------------------------------------------------------

def print_setting(args: argparse.Namespace) -> None:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} before the run; the load generator (this "
          "process, one event loop), the api, RabbitMQ, Redis and anything else running share them")
    print(f"front doors: nothing consumes their namespaces (jobs wait in the ingress queue and are deleted "
          f"with it); warm-up {args.warmup_seconds:.0f} s, then {args.seconds:.0f} s with {args.concurrency} "
          f"in flight, then {args.rate:.0f} jobs/s for {args.paced_seconds:.0f} s")


def summarise(amqp: Door, api: Door, pipeline_jobs_per_s: float | None, rate: float) -> None:
    ratio = api.saturated.jobs_per_s / amqp.saturated.jobs_per_s
    hop_p50 = api.percentile_ms(50) - amqp.percentile_ms(50)
    hop_p99 = api.percentile_ms(99) - amqp.percentile_ms(99)
    print(f"api / amqp accepted jobs/s: {ratio:.2f}; the HTTP hop (HTTP, key, rate limit and quota, queued record) "
          f"adds {hop_p50:.2f} ms at p50, {hop_p99:.2f} ms at p99 at {rate:.0f} jobs/s")
    if pipeline_jobs_per_s:
        print(f"api accepted jobs/s / pipeline jobs/s: {api.saturated.jobs_per_s / pipeline_jobs_per_s:.2f}")
    print(f"api_accept_jobs_per_s {api.saturated.jobs_per_s:.0f}")
    print(f"amqp_accept_jobs_per_s {amqp.saturated.jobs_per_s:.0f}")
    print(f"api_ratio {ratio:.2f}")
    if pipeline_jobs_per_s:
        print(f"pipeline_jobs_per_s {pipeline_jobs_per_s:.0f}")
    print(f"http_hop_p50_ms {hop_p50:.2f}")
    print(f"http_hop_p99_ms {hop_p99:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64, help="submissions in flight at saturation")
    parser.add_argument("--seconds", type=float, default=10.0, help="saturation, per door")
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=100.0, help="paced submissions per second")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--pipeline-jobs", type=int, default=3000, help="bench-pipeline's backlog; 0: skip it")
    parser.add_argument("--baseline", metavar="REV", help="also the api's accept rate of this git revision "
                        "(a worktree of it, this venv) beside the working tree's, in alternation")
    parser.add_argument("--rounds", type=int, default=2, help="--baseline: measurements of each, alternating")
    args = parser.parse_args()

    run = f"benchapi{uuid.uuid4().hex[:6]}"
    os.environ.update(SERVICE_ENV)
    settings = Settings().model_copy(update={"queue_max_length": QUEUE_MAX_LENGTH})
    print_setting(args)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as log_dir:
        amqp = asyncio.run(amqp_door(settings.model_copy(update={"namespace": run + "amqp"}), args))
        api = asyncio.run(api_door(settings.model_copy(update={"namespace": run + "http"}), args, Path(log_dir)))
        comparison = None
        if args.baseline:
            label = checkout.git_log(args.baseline, "%h")
            print(f"baseline {label}: {checkout.git_log(args.baseline, '%s')[:100]}")
            with checkout.worktree(args.baseline) as folder:
                comparison = asyncio.run(compare(settings.model_copy(update={"namespace": run}), args,
                                                 Path(log_dir), folder, label))
    pipeline = pipeline_rate(run + "pipe", args.pipeline_jobs) if args.pipeline_jobs else None
    summarise(amqp, api, pipeline, args.rate)
    if comparison:
        summarise_comparison(comparison)


if __name__ == "__main__":
    main()
