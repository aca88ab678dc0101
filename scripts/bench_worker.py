"""`make bench-worker`: how much of the model's speed the worker keeps.

For each backend, the same model, batch size, prompts, seeds and number of batches per round,
in alternating rounds:

1. bare loop: the generator's `generate` called back to back in this process;
2. service path: the tier queue filled with Task messages whose job records exist (`routed`,
   as the router leaves them) and drained by the real worker service (a separate process,
   `python -m services.worker`, with its model process, on the local RabbitMQ and Redis in a
   namespace of its own): admit, generate, encode PNG, store, hand on. Timed from the first
   `generating` to the last `judging` (light tier) or `done` (heavy tier) in the event stream.

Both sides are loaded and warmed up once (the worker also drains a warm-up round) before the
timed rounds, so neither start-up nor model load is counted. The machine's own speed drifts
(the bare loop alone varies by +-10 % between runs a few seconds apart on the 2-core
development machine), so each round's bare loop and service path run back to back, the
efficiency of a round is service rate / bare rate, and the figure is the median over rounds.
PyTorch gets `--torch-threads` threads (default 1) in both: on a CPU the model stands in for
the GPU, and the worker's own threads (event loop, PNG encoding) need a core of their own, as
they have beside a real GPU.

Last line: `worker_efficiency <ratio>`, the lower of the backends' medians; target >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time
import urllib.request
import uuid
from dataclasses import dataclass, replace

import orjson
from prometheus_client.parser import text_string_to_metric_families

from shared import supervisor
from shared.backends import make_generator
from shared.backends.base import GenerationInput
from shared.bus import Bus
from shared.profiles import load_profile
from shared.reference import prompts
from shared.schemas import Job, JobState, Task, Tier
from shared.settings import Settings
from shared.store import Change, Store


@dataclass(frozen=True)
class Case:
    backend: str
    profile: str
    model: str
    time_scale: float
    rounds: int  # the default: as many as it takes for the median to settle


CASES = {
    # The tiny pipeline on this CPU: the worker's own CPU work competes with the model's, and
    # the machine's speed drifts, so it takes many short rounds.
    "tiny": Case("tiny", "tiny-cpu", "tiny-sd-turbo", 1.0, rounds=20),
    # SDXL-Lightning as the paper's main experiment emulates it (50 ms per image, 180 ms per batch
    # of 4): sleeping does not drift.
    "emulated": Case("emulated", "paper-l40s-x10", "sdxl-lightning", 1.0, rounds=5),
}
FINAL_STATE = {Tier.light: JobState.judging, Tier.heavy: JobState.done}
WARM_UP_BATCHES = 4
FOLLOW_PAUSE_S = 0.2


def make_jobs(count: int, resolution: int) -> list[Job]:
    texts = prompts()
    return [Job(prompt=texts[i % len(texts)], seed=i, width=resolution, height=resolution) for i in range(count)]


def inputs_of(jobs: list[Job]) -> list[GenerationInput]:
    return [GenerationInput(job.job_id, job.prompt, job.negative_prompt, job.seed, job.width, job.height)
            for job in jobs]


class BareLoop:
    """The generator in this process, built and warmed up once."""

    def __init__(self, case: Case, device: str) -> None:
        model = load_profile(case.profile).model(case.model)
        self.generator = make_generator(case.backend, model, device=device, time_scale=case.time_scale)
        self.generator.warm_up()

    def rate(self, jobs: list[Job], batch: int) -> float:
        """Images/s of back-to-back generate calls."""
        inputs = inputs_of(jobs)
        started = time.perf_counter()
        for start in range(0, len(inputs), batch):
            self.generator.generate(inputs[start:start + batch])
        return len(inputs) / (time.perf_counter() - started)

    def close(self) -> None:
        self.generator.close()


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
            for last_id, event in events:
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

    def __init__(self, case: Case, batch: int, tier: Tier, args: argparse.Namespace) -> None:
        self.namespace = f"benchw{uuid.uuid4().hex[:8]}"
        self.tier, self.timeout_s = tier, args.timeout_s
        self.settings = Settings(namespace=self.namespace, profile=case.profile)
        self.metrics_port = free_port()
        env = service_settings(case, self.namespace, tier, batch, args.batch_wait_ms, args.device)
        env["HADIS_METRICS_PORT"] = str(self.metrics_port)
        self.worker = supervisor.Child(f"{tier.value}-worker", args.worker_module, env)
        self.worker.start()
        self.busy_fractions: list[float] = []

    def rate(self, jobs: list[Job]) -> float:
        """Images/s through queue -> worker -> store; notes the share of that time the model was busy."""
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


def measure(case: Case, args: argparse.Namespace, tier: Tier) -> tuple[list[float], list[float], list[float]]:
    """Bare and service rates of each round, and the model's busy share of each service round,
    after a warm-up of both."""
    resolution = load_profile(case.profile).model(case.model).resolution
    bare, service = BareLoop(case, args.device), ServicePath(case, args.batch, tier, args)
    try:
        service.rate(make_jobs(args.batch * WARM_UP_BATCHES, resolution))  # waits out the worker's start
        service.busy_fractions.clear()
        bare_rates, service_rates = [], []
        for _ in range(case.rounds):
            bare_rates.append(bare.rate(make_jobs(args.batch * args.batches, resolution), args.batch))
            service_rates.append(service.rate(make_jobs(args.batch * args.batches, resolution)))
        return bare_rates, service_rates, service.busy_fractions
    finally:
        service.close()
        bare.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=sorted(CASES), default=["tiny", "emulated"])
    parser.add_argument("--tiny-model", default=CASES["tiny"].model, help="the tiny-cpu model of the tiny case")
    parser.add_argument("--device", default="cpu", help="where the tiny model runs (cpu, cuda)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=20, help="batches per round, on each path")
    parser.add_argument("--rounds", type=int, help="alternating rounds; the median ratio counts (default: per backend)")
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of both paths")
    parser.add_argument("--tier", choices=[t.value for t in Tier], default=Tier.light.value)
    parser.add_argument("--batch-wait-ms", type=int, default=20, help="HADIS_BATCH_WAIT_MS of the worker")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--worker-module", default="services.worker", help="the worker program (to try a change)")
    args = parser.parse_args(argv)
    if min(args.batch, args.batches, args.rounds or 1, args.torch_threads) < 1:
        parser.error("--batch, --batches, --rounds and --torch-threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Read by PyTorch when it is first imported (by the tiny backend, below) and by the worker.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    tier = Tier(args.tier)
    ratios = {}
    for name in args.backends:
        case = CASES[name] if name != "tiny" else replace(CASES[name], model=args.tiny_model)
        case = replace(case, rounds=args.rounds or case.rounds)
        bare, served, busy = measure(case, args, tier)
        round_ratios = [service / bare for bare, service in zip(bare, served)]
        ratios[name] = statistics.median(round_ratios)
        print(f"{name}: {case.model} from {case.profile}, batch {args.batch} x {args.batches} batches, {tier.value} "
              f"tier, {args.device}, {args.torch_threads} torch thread(s): bare loop {statistics.median(bare):.2f} "
              f"images/s, queue -> worker -> store {statistics.median(served):.2f} images/s, ratio "
              f"{ratios[name]:.3f}, model busy {statistics.median(busy):.3f} of the service path's time "
              f"(medians of {case.rounds} rounds; rounds: bare {rates_text(bare)}, service {rates_text(served)}, "
              f"ratio {rates_text(round_ratios, 3)}, busy {rates_text(busy, 3)})", flush=True)
    lowest = min(ratios, key=ratios.get)
    print(f"lowest: {lowest} ({', '.join(f'{name} {ratio:.3f}' for name, ratio in ratios.items())}); target >= 0.95")
    print(f"worker_efficiency {ratios[lowest]:.3f}")


def rates_text(rates: list[float], digits: int = 1) -> str:
    return " ".join(f"{rate:.{digits}f}" for rate in rates)


if __name__ == "__main__":
    main()
