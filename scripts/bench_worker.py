"""`make bench-worker`: how much of the model's speed the worker keeps.

For each backend, the same model, batch size, prompts, seeds and number of batches per round,
in alternating rounds:

1. bare loop: the generator's `generate` called back to back, in a process of its own
   (scripts/bare_loop.py, timed there);
2. service path: the tier queue filled with Task messages whose job records exist (`routed`,
   as the router leaves them) and drained by the real worker service (a separate process,
   `python -m services.worker`, with its model process, on the local RabbitMQ and Redis in a
   namespace of its own): admit, generate, encode PNG, store, hand on. Timed from the first
   `generating` to the last `judging` (light tier) or `done` (heavy tier) in the event stream.

An epoch starts a fresh bare-loop process and a fresh worker, warms both up (each runs an
untimed round), then runs the timed rounds; neither start-up nor model load is counted. The
machine's own speed drifts (the bare loop alone varies by +-10 % between runs a few seconds apart
on the 2-core development machine), so each round's bare loop and service path run back to back
and the efficiency of a round is service rate / bare rate. And each process draws a speed of its
own for its lifetime (two fresh processes running the same model on the same CPU differ by up to
3 %), so the rounds are spread over several epochs. The figure is the median over all rounds.
On a CPU the model stands in for the GPU, which is a device of its own: PyTorch gets
`--torch-threads` threads (default 1) in both paths, and with two CPUs or more the model gets a
CPU of its own (`--model-cpu`; `auto`: the one serving the fewest device interrupts): the bare
loop runs there, and so does the worker's model process (HADIS_MODEL_CPUS), while the worker,
this harness, and for the run the local RabbitMQ and Redis, run on the others
(scripts/cpu_isolation.py). Otherwise the model computes several per cent slower in the service
path than alone, as the serving processes wake on its CPU: that would measure the machine's
scheduler, not what the worker leaves the model.

Last line: `worker_efficiency <ratio>`, the lower of the backends' medians; target >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bare_loop import prompt_and_seed
from cpu_isolation import Moved, cpu_list, listening_pids, local_ports, moved_to, quietest_cpu, running_on
from shared import supervisor
from shared.bus import Bus
from shared.profiles import load_profile
from shared.schemas import Job, JobState, Task, Tier
from shared.settings import Settings
from shared.store import Change, Store


@dataclass(frozen=True)
class Case:
    backend: str
    profile: str
    model: str
    time_scale: float
    # The defaults: as many as it takes for the median to settle.
    epochs: int  # a fresh worker and bare-loop process each
    rounds: int  # per epoch
    batches: int  # per round and path: the service path's rounds start and end with an empty pipeline


CASES = {
    # The tiny pipeline on this CPU: the machine's speed drifts (so many short paired rounds) and
    # each process draws a speed of its own (so several epochs).
    "tiny": Case("tiny", "tiny-cpu", "tiny-sd-turbo", 1.0, epochs=4, rounds=5, batches=40),
    # SDXL-Lightning as the paper's main experiment emulates it (50 ms per image, 180 ms per batch
    # of 4): sleeping does not drift.
    "emulated": Case("emulated", "paper-l40s-x10", "sdxl-lightning", 1.0, epochs=1, rounds=5, batches=20),
}
BARE_LOOP = Path(__file__).with_name("bare_loop.py")
FINAL_STATE = {Tier.light: JobState.judging, Tier.heavy: JobState.done}
WARM_UP_BATCHES = 4
FOLLOW_PAUSE_S = 0.2


@dataclass(frozen=True)
class Cpus:
    """Where the model computes, and where everything else of the benchmark runs."""

    model: frozenset[int]
    serving: frozenset[int]

    @classmethod
    def choose(cls, choice: str, case: Case, device: str) -> Cpus | None:
        """`auto`: for a model that computes on this machine's CPUs, if there are two or more, the
        one that serves the fewest device interrupts. On a GPU nothing is pinned, as deployed."""
        available = sorted(os.sched_getaffinity(0))
        computes_here = case.backend != "emulated" and device == "cpu"
        if choice == "none" or (choice == "auto" and (not computes_here or len(available) < 2)):
            return None
        model = quietest_cpu(available) if choice == "auto" else int(choice)
        if model not in available or len(available) < 2:
            raise SystemExit(f"--model-cpu {choice}: needs a CPU of {available} and another beside it")
        return cls(frozenset({model}), frozenset(available) - {model})

    def describe(self, moved: Moved) -> str:
        return (f"model on CPU {cpu_list(self.model)}, worker and harness on CPU {cpu_list(self.serving)}, "
                f"{moved.describe()}")


def make_jobs(count: int, resolution: int) -> list[Job]:
    """The service path's jobs: the bare loop's prompts and seeds (scripts/bare_loop.py)."""
    return [Job(prompt=prompt, seed=seed, width=resolution, height=resolution)
            for prompt, seed in map(prompt_and_seed, range(count))]


class BareLoop:
    """scripts/bare_loop.py: the generator called back to back in a process of its own, on the
    model's CPUs."""

    def __init__(self, case: Case, device: str, cpus: frozenset[int] | None) -> None:
        command = [sys.executable, str(BARE_LOOP), case.backend, case.profile, case.model, device, str(case.time_scale)]
        with running_on(cpus):
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.answer("ready")

    def rate(self, count: int, batch: int) -> float:
        """Images/s of back-to-back generate calls."""
        self.process.stdin.write(f"{count} {batch}\n")
        self.process.stdin.flush()
        return float(self.answer("images/s"))

    def answer(self, what: str) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare loop exited (code {self.process.wait()}) before its {what}")
        return line.strip()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def service_settings(case: Case, namespace: str, tier: Tier, batch: int, batch_wait_ms: int,
                     device: str) -> dict[str, str]:
    batch_setting = "HADIS_PLAN_LIGHT_BATCH" if tier is Tier.light else "HADIS_PLAN_HEAVY_BATCH"
    model_setting = "HADIS_PLAN_LIGHT_MODEL" if tier is Tier.light else "HADIS_PLAN_HEAVY_MODEL"
    return {
        "HADIS_NAMESPACE": namespace,
        "HADIS_TIER": tier.value,
        "HADIS_GPU": f"bench-{tier.value}0",
        "HADIS_BACKEND": case.backend,
        "HADIS_PROFILE": case.profile,
        "HADIS_DEVICE": device,
        "HADIS_TIME_SCALE": str(case.time_scale),
        model_setting: case.model,
        batch_setting: str(batch),
        "HADIS_BATCH_WAIT_MS": str(batch_wait_ms),
        "HADIS_LOG_LEVEL": "warning",
        "HADIS_LOG_FORMAT": "json",
        "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
    }


async def prefill(settings: Settings, jobs: list[Job], tier: Tier) -> str:
    """Job records as the router leaves them, and their Tasks on the tier queue.
    Returns the event id to follow from."""
    bus, store = await Bus.connect(settings), await Store.connect(settings)
    try:
        since_id = await store.last_event_id()
        deadline = time.time() + 3600
        changes = [
            Change(job.job_id, JobState.routed,
                   {"prompt": job.prompt, "submitted_at": job.submitted_at, "deadline": deadline,
                    "metadata": job.metadata, "tier": tier.value, "router_score": 0.0, "plan_version": 0},
                   create=True, passing=(JobState.queued,))
            for job in jobs
        ]
        await store.apply_many(changes)
        queue = bus.queues.tier(tier)
        for start in range(0, len(jobs), 200):
            await asyncio.gather(*(
                bus.publish(queue, Task(job=job, deadline=deadline, tier=tier, router_score=0.0), message_id=job.job_id)
                for job in jobs[start:start + 200]
            ))
        return since_id
    finally:
        await bus.close()
        await store.close()


async def follow_until_finished(settings: Settings, job_ids: set[str], since_id: str, final: JobState,
                                timeout_s: float, worker: supervisor.Child) -> tuple[float, float]:
    """Event-stream times of the first `generating` and the last `final` of these jobs."""
    store = await Store.connect(settings)
    try:
        waiting, first_generating, last_final = set(job_ids), None, 0.0
        give_up_at, last_id = time.monotonic() + timeout_s, since_id
        while waiting:
            if time.monotonic() > give_up_at:
                raise TimeoutError(f"{len(waiting)} of {len(job_ids)} jobs did not reach {final.value}")
            if worker.process.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.process.returncode}")
            events = await store.read_events(last_id, count=5000, block_ms=1000)
            for event_id, event in events:
                last_id = event_id  # the next read starts after it
                if event["job_id"] not in job_ids:
                    continue
                at = orjson.loads(event["transition"])["at"]
                if event["state"] == JobState.generating.value:
                    first_generating = at if first_generating is None else min(first_generating, at)
                elif event["state"] == final.value:
                    waiting.discard(event["job_id"])
                    last_final = max(last_final, at)
                elif JobState(event["state"]).terminal:
                    raise RuntimeError(f"job {event['job_id']} ended {event['state']}")
            # Times come from the events themselves, so reading them in batches loses no accuracy,
            # and this process and Redis wake less often beside the worker being measured.
            await asyncio.sleep(FOLLOW_PAUSE_S)
        return first_generating, last_final
    finally:
        await store.close()


async def delete_namespace(settings: Settings) -> None:
    bus, store = await Bus.connect(settings), await Store.connect(settings)
    await bus.delete_namespace()
    await store.delete_namespace()
    await bus.close()
    await store.close()


class ServicePath:
    """One worker process on a namespace of its own, fed round after round."""

    def __init__(self, case: Case, batch: int, tier: Tier, args: argparse.Namespace, cpus: Cpus | None) -> None:
        self.namespace = f"benchw{uuid.uuid4().hex[:8]}"
        self.tier, self.timeout_s = tier, args.timeout_s
        self.serving_cpus = cpus.serving if cpus else None
        self.settings = Settings(namespace=self.namespace, profile=case.profile)
        self.metrics_port = free_port()
        env = service_settings(case, self.namespace, tier, batch, args.batch_wait_ms, args.device)
        env["HADIS_METRICS_PORT"] = str(self.metrics_port)
        if cpus:
            env["HADIS_MODEL_CPUS"] = cpu_list(cpus.model)
        self.worker = supervisor.Child(f"{tier.value}-worker", args.worker_module, env)
        with running_on(self.serving_cpus):  # the worker inherits them; its model process moves to its own
            self.worker.start()
        self.busy_fractions: list[float] = []

    def rate(self, jobs: list[Job]) -> float:
        """Images/s through queue -> worker -> store; notes the share of that time the model was busy."""
        with running_on(self.serving_cpus):
            return self._rate(jobs)

    def _rate(self, jobs: list[Job]) -> float:
        busy_before = self.model_busy_s()
        since_id = asyncio.run(prefill(self.settings, jobs, self.tier))
        first, last = asyncio.run(follow_until_finished(self.settings, {job.job_id for job in jobs}, since_id,
                                                        FINAL_STATE[self.tier], self.timeout_s, self.worker))
        self.busy_fractions.append((self.model_busy_s() - busy_before) / (last - first))
        return len(jobs) / (last - first)

    def model_busy_s(self) -> float:
        """The worker's hadis_model_busy_seconds_total (0 before it serves its metrics)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == "hadis_model_busy_seconds_total")

    def close(self) -> None:
        supervisor.stop_all([self.worker])
        asyncio.run(delete_namespace(self.settings))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(case: Case, args: argparse.Namespace, tier: Tier,
            cpus: Cpus | None) -> tuple[list[float], list[float], list[float]]:
    """Bare and service rates of every round of every epoch, and the model's busy share of each
    service round."""
    bare_rates, service_rates, busy = [], [], []
    for epoch in range(case.epochs):
        epoch_bare, epoch_service, epoch_busy = measure_epoch(case, args, tier, cpus)
        bare_rates += epoch_bare
        service_rates += epoch_service
        busy += epoch_busy
        epoch_ratio = statistics.median(service / bare for bare, service in zip(epoch_bare, epoch_service, strict=True))
        print(f"{case.backend}: epoch {epoch + 1} of {case.epochs}: median ratio {epoch_ratio:.3f}",
              file=sys.stderr, flush=True)
    return bare_rates, service_rates, busy


def measure_epoch(case: Case, args: argparse.Namespace, tier: Tier,
                  cpus: Cpus | None) -> tuple[list[float], list[float], list[float]]:
    """A fresh bare-loop process and a fresh worker, both warmed up, then alternating rounds."""
    resolution = load_profile(case.profile).model(case.model).resolution
    warm_up, count = args.batch * WARM_UP_BATCHES, args.batch * case.batches
    bare = BareLoop(case, args.device, cpus.model if cpus else None)
    service = ServicePath(case, args.batch, tier, args, cpus)
    try:
        bare.rate(warm_up, args.batch)
        service.rate(make_jobs(warm_up, resolution))  # also waits out the worker's start
        service.busy_fractions.clear()
        bare_rates, service_rates = [], []
        for _ in range(case.rounds):
            bare_rates.append(bare.rate(count, args.batch))
            service_rates.append(service.rate(make_jobs(count, resolution)))
        return bare_rates, service_rates, service.busy_fractions
    finally:
        service.close()
        bare.close()


@contextlib.contextmanager
def isolated(cpus: Cpus | None):
    """The local RabbitMQ and Redis off the model's CPU while a case runs; yields where things ran."""
    if cpus is None:
        yield "no CPU pinned"
        return
    settings = Settings()
    servers = listening_pids(local_ports(settings.amqp_url.get_secret_value(), settings.redis_url.get_secret_value()))
    with moved_to(servers, cpus.serving) as moved:
        yield cpus.describe(moved)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=sorted(CASES), default=["tiny", "emulated"])
    parser.add_argument("--tiny-model", default=CASES["tiny"].model, help="the tiny-cpu model of the tiny case")
    parser.add_argument("--device", default="cpu", help="where the tiny model runs (cpu, cuda)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, help="batches per round, on each path (default: per backend)")
    parser.add_argument("--epochs", type=int, help="a fresh worker and bare loop each (default: per backend)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per epoch; the median ratio of all counts "
                                                   "(default: per backend)")
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of both paths")
    parser.add_argument("--model-cpu", default="auto",
                        help="the CPU the tiny model computes on, alone: auto (with --device cpu and two CPUs or "
                             "more, the one serving the fewest device interrupts), a number, or none")
    parser.add_argument("--tier", choices=[t.value for t in Tier], default=Tier.light.value)
    parser.add_argument("--batch-wait-ms", type=int, default=20, help="HADIS_BATCH_WAIT_MS of the worker")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--worker-module", default="services.worker", help="the worker program (to try a change)")
    args = parser.parse_args(argv)
    if args.model_cpu not in ("auto", "none") and not args.model_cpu.isdigit():
        parser.error("--model-cpu takes auto, none or a CPU number")
    if min(args.batch, args.batches or 1, args.epochs or 1, args.rounds or 1, args.torch_threads) < 1:
        parser.error("--batch, --batches, --epochs, --rounds and --torch-threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Read by PyTorch when it is first imported (by the tiny backend, below) and by the worker.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    tier = Tier(args.tier)
    ratios = {}
    for name in args.backends:
        case = CASES[name] if name != "tiny" else replace(CASES[name], model=args.tiny_model)
        case = replace(case, epochs=args.epochs or case.epochs, rounds=args.rounds or case.rounds,
                       batches=args.batches or case.batches)
        cpus = Cpus.choose(args.model_cpu, case, args.device)
        with isolated(cpus) as where:
            bare, served, busy = measure(case, args, tier, cpus)
        round_ratios = [service / bare for bare, service in zip(bare, served, strict=True)]
        ratios[name] = statistics.median(round_ratios)
        print(f"{name}: {case.model} from {case.profile}, batch {args.batch} x {case.batches} batches, {tier.value} "
              f"tier, {args.device}, {args.torch_threads} torch thread(s): bare loop {statistics.median(bare):.2f} "
              f"images/s, queue -> worker -> store {statistics.median(served):.2f} images/s, ratio "
              f"{ratios[name]:.3f}, model busy {statistics.median(busy):.3f} of the service path's time, "
              f"{where} (medians of {case.epochs} x {case.rounds} rounds; rounds: bare {rates_text(bare)}, "
              f"service {rates_text(served)}, ratio {rates_text(round_ratios, 3)}, busy {rates_text(busy, 3)})",
              flush=True)
    lowest = min(ratios, key=ratios.get)
    print(f"lowest: {lowest} ({', '.join(f'{name} {ratio:.3f}' for name, ratio in ratios.items())}); target >= 0.95")
    print(f"worker_efficiency {ratios[lowest]:.3f}")


def rates_text(rates: list[float], digits: int = 1) -> str:
    return " ".join(f"{rate:.{digits}f}" for rate in rates)


if __name__ == "__main__":
    main()
