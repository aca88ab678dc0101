"""`make bench-worker`: how much of the model's speed the worker keeps.

For each backend, the same model, batch size, prompts, seeds and number of batches, twice:

1. bare loop: the generator's `generate` called back to back in this process;
2. service path: the tier queue pre-filled with Task messages whose job records exist
   (`routed`, as the router leaves them), then the real worker service (a separate
   process, `python -m services.worker`, on the local RabbitMQ and Redis in a namespace
   of its own) drains it: admit, generate, encode PNG, store, hand on. Timed from the
   first `generating` to the last `judging` (light tier) or `done` (heavy tier) in the
   event stream, so the worker's start-up and model load are not counted.

Both are run `--repeats` times, alternately, and each keeps its best rate: other work on
the machine only ever slows a run down, so the best run is the least disturbed one.
PyTorch gets `--torch-threads` threads (default 1) in both: on a CPU the model stands in
for the GPU, and the worker's own threads (event loop, PNG encoding) need a core of their
own, as they have beside a real GPU.

Ratio = best service-path images/s / best bare-loop images/s; target >= 0.95.
Last line: `worker_efficiency <ratio>`, the lower of the backends' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import dataclass, replace

import orjson

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


CASES = {
    # The tiny pipeline on this CPU: the worker's own CPU work competes with the model's.
    "tiny": Case("tiny", "tiny-cpu", "tiny-sd-turbo", 1.0),
    # SDXL-Lightning as the paper's main experiment emulates it (50 ms per image, 180 ms per batch of 4).
    "emulated": Case("emulated", "paper-l40s-x10", "sdxl-lightning", 1.0),
}
FINAL_STATE = {Tier.light: JobState.judging, Tier.heavy: JobState.done}


def make_jobs(count: int, resolution: int) -> list[Job]:
    texts = prompts()
    return [Job(prompt=texts[i % len(texts)], seed=i, width=resolution, height=resolution) for i in range(count)]


def inputs_of(jobs: list[Job]) -> list[GenerationInput]:
    return [GenerationInput(job.job_id, job.prompt, job.negative_prompt, job.seed, job.width, job.height)
            for job in jobs]


def bare_loop_rate(case: Case, jobs: list[Job], batch: int, device: str) -> float:
    """Images/s of back-to-back generate calls (after a warm-up)."""
    model = load_profile(case.profile).model(case.model)
    generator = make_generator(case.backend, model, device=device, time_scale=case.time_scale)
    generator.warm_up()
    inputs = inputs_of(jobs)
    started = time.perf_counter()
    for start in range(0, len(inputs), batch):
        generator.generate(inputs[start:start + batch])
    elapsed = time.perf_counter() - started
    generator.close()
    return len(inputs) / elapsed


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
            for last_id, event in await store.read_events(last_id, count=5000, block_ms=1000):
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
        return first_generating, last_final
    finally:
        await store.close()


async def delete_namespace(settings: Settings) -> None:
    bus, store = await Bus.connect(settings), await Store.connect(settings)
    await bus.delete_namespace()
    await store.delete_namespace()
    await bus.close()
    await store.close()


def service_path_rate(case: Case, jobs: list[Job], batch: int, tier: Tier, args: argparse.Namespace) -> float:
    """Images/s through queue -> worker -> store, with the worker in a process of its own."""
    namespace = f"benchw{uuid.uuid4().hex[:8]}"
    env = service_settings(case, namespace, tier, batch, args.batch_wait_ms, args.device)
    settings = Settings(namespace=namespace, profile=case.profile)
    since_id = asyncio.run(prefill(settings, jobs, tier))
    worker = supervisor.Child(f"{tier.value}-worker", args.worker_module, env)
    worker.start()
    try:
        first, last = asyncio.run(follow_until_finished(settings, {job.job_id for job in jobs}, since_id,
                                                        FINAL_STATE[tier], args.timeout_s, worker))
    finally:
        supervisor.stop_all([worker])
        asyncio.run(delete_namespace(settings))
    return len(jobs) / (last - first)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=sorted(CASES), default=["tiny", "emulated"])
    parser.add_argument("--tiny-model", default=CASES["tiny"].model, help="the tiny-cpu model of the tiny case")
    parser.add_argument("--device", default="cpu", help="where the tiny model runs (cpu, cuda)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each path; the best counts")
    parser.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of both paths")
    parser.add_argument("--tier", choices=[t.value for t in Tier], default=Tier.light.value)
    parser.add_argument("--batch-wait-ms", type=int, default=20, help="HADIS_BATCH_WAIT_MS of the worker")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--worker-module", default="services.worker", help="the worker program (to try a change)")
    args = parser.parse_args(argv)
    if min(args.batch, args.batches, args.repeats, args.torch_threads) < 1:
        parser.error("--batch, --batches, --repeats and --torch-threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Read by PyTorch when it is first imported (by the tiny backend, below) and by the worker.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    tier = Tier(args.tier)
    ratios = {}
    for name in args.backends:
        case = CASES[name] if name != "tiny" else replace(CASES[name], model=args.tiny_model)
        resolution = load_profile(case.profile).model(case.model).resolution
        jobs = make_jobs(args.batch * args.batches, resolution)
        bare, served = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop_rate(case, jobs, args.batch, args.device))
            served.append(service_path_rate(case, jobs, args.batch, tier, args))
        ratios[name] = max(served) / max(bare)
        print(f"{name}: {case.model} from {case.profile}, batch {args.batch} x {args.batches} batches, {tier.value} "
              f"tier, {args.device}, {args.torch_threads} torch thread(s): bare loop {max(bare):.2f} images/s, "
              f"queue -> worker -> store {max(served):.2f} images/s, ratio {ratios[name]:.3f} "
              f"(best of {args.repeats}; runs: bare {rates_text(bare)}, service {rates_text(served)})", flush=True)
    lowest = min(ratios, key=ratios.get)
    print(f"lowest: {lowest} ({', '.join(f'{name} {ratio:.3f}' for name, ratio in ratios.items())}); target >= 0.95")
    print(f"worker_efficiency {ratios[lowest]:.3f}")


def rates_text(rates: list[float]) -> str:
    return " ".join(f"{rate:.1f}" for rate in rates)


if __name__ == "__main__":
    main()
