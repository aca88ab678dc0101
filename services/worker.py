"""The worker: one program for both tiers (HADIS_TIER=light|heavy). It owns one GPU (or an
emulated one), loads the model the plan names for its tier, and pipelines its work:
while the model runs batch k, batch k+1 is being collected and batch k-1's images
are being encoded and stored. Generation and PNG encoding never run on the event loop.

Light results go to the quality judge; heavy results finish the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from shared import metrics
from shared.backends import encode_png
from shared.backends.base import GenerationInput, Generator
from shared.backends.hosts import make_host
from shared.backends.model_process import ModelProcessFailed
from shared.batching import BatchCollector
from shared.bus import Delivery
from shared.crashpoints import crash_point
from shared.errors import BackendFailed, Disposition, Expired, InvalidJob, Overloaded
from shared.logging import bind_job, get_logger
from shared.outcome import Applied
from shared.policies import steps
from shared.policies.admission import (
    HANDOFF_S,
    PIPELINE_DEPTH,
    PREFETCH_BATCHES,
    BatchTimer,
    Fallback,
    batch_ends_at,
    ends_too_late,
    light_can_make,
    profiled_batch_s,
    too_late_fallback,
)
from shared.policies.steps import Next
from shared.policies.transitions import load_s
from shared.profiles import load_profile
from shared.schemas import JobState, Task, Tier, job_id_of, parse_message
from shared.service import Service, run
from shared.store import Change, hand_back, owner_id, serve_light

log = get_logger(__name__)

# Batches whose images are being encoded and stored at once (bounds the memory they hold).
MAX_FINISHING_BATCHES = 2
FEED_RETRY_S = 0.5  # after a failed turn of the feeder


@dataclass
class Item:
    """A job this worker has claimed: its delivery, and any duplicate deliveries of the same job
    that arrived meanwhile (after a broker reconnect the broker hands out again what this worker
    still holds): they are settled with it, so the job is generated once."""

    delivery: Delivery
    task: Task
    also: list[Delivery] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.task.job.job_id


@dataclass
class Batch:
    """Jobs admitted together, for one model: they run with it even when the plan has changed the
    tier's model since (admission timed them with it; run with another, they would end at another
    time: a batch admitted for sd35-medium and run with sd35-large ended 14 s after its estimate).
    The model is swapped between batches, where admission expected it."""

    items: list[Item]
    model: str
    ends_by: float  # when admission expected it to end (the batches ahead of it and a model load included)


def seed_of(task: Task) -> int:
    """The job's seed, or one derived from its id, so that a redelivered job draws the same image."""
    if task.job.seed is not None:
        return task.job.seed
    return int.from_bytes(hashlib.blake2b(task.job.job_id.encode(), digest_size=4).digest(), "big")


class TierWorker:
    def __init__(self, service: Service, tier: Tier) -> None:
        self.service = service
        self.tier = tier
        self.settings = service.settings
        self.profile = load_profile(self.settings.profile)
        self.collector = BatchCollector()
        self.host = make_host(self.settings)  # where the model runs (a process of its own, for torch models)
        self.gpu = ThreadPoolExecutor(self.host.concurrent_batches, thread_name_prefix=f"gpu-{tier.value}")
        self.io = ThreadPoolExecutor(2, thread_name_prefix=f"io-{tier.value}")
        self.generator: Generator | None = None
        self.finishing: set[asyncio.Task] = set()
        self.batch_s = BatchTimer()
        self.slots = asyncio.Semaphore(PIPELINE_DEPTH)
        self.busy_until = 0.0  # when the batches admitted so far are expected to have ended
        self.admitted_model = ""  # the model of the last batch admitted (the one loaded once they have run)
        # Who holds this worker's claims: unique per start, even when a pid comes round again.
        self.owner = owner_id(self.settings.gpu, os.getpid(), self.settings.worker_instance or secrets.token_hex(4))
        self.claimed: dict[str, Item] = {}  # job id -> the item, from its claim until it is settled

    @property
    def loaded(self) -> Generator:
        """The generator of the model loaded now (ensure_model loads one before anything runs)."""
        assert self.generator is not None, "no model loaded yet"
        return self.generator

    @property
    def queue(self) -> str:
        return self.service.bus.queues.tier(self.tier)

    async def on_delivery(self, delivery: Delivery) -> None:
        self.collector.put(delivery)

    async def run(self) -> None:
        """Two stages: a feeder collects and admits batch k+1 while the model runs batch k; the
        finishing of batch k-1 (PNG, store, hand-on) runs as a task of its own."""
        await self.ensure_model(self.planned_model())
        self.admitted_model = self.loaded.model.name
        await self.beat()  # the claims' owner is alive before the first claim
        batch_size = self.service.plans.current.batch_for(self.tier)
        consumer = await self.service.bus.consume(
            self.queue, self.on_delivery, prefetch=PREFETCH_BATCHES * batch_size
        )
        metrics.mark_ready("worker")
        log.info("worker_ready", tier=self.tier.value, model=self.loaded.model.name, gpu=self.settings.gpu)
        heartbeat = asyncio.create_task(self.heartbeat(), name="heartbeat")
        admitted: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        feeder = asyncio.create_task(self.feed(consumer, admitted), name="feeder")
        running: asyncio.Task | None = None
        while not self.service.stopping.is_set():
            if feeder.done():
                # A feeder that died would leave a worker with a green heartbeat and a stopped tier:
                # exit instead, and let the agent start a fresh one (its deliveries are redelivered).
                error = None if feeder.cancelled() else feeder.exception()
                raise RuntimeError(f"the feeder stopped: {type(error).__name__}: {error}")
            if (running is None or running.done()) and admitted.empty():
                await self.ensure_model(self.planned_model())  # idle: take the plan's model now
            try:
                batch = await asyncio.wait_for(admitted.get(), timeout=1.0)
            except TimeoutError:
                continue
            if batch.model != self.loaded.model.name:  # the plan changed the model: after the batch ahead
                if running is not None:
                    await running
                    running = None
                await self.ensure_model(batch.model)
            # Batch k+1 goes to the model's executor before batch k is awaited, so the model
            # thread starts it the moment k ends, without waiting for the event loop.
            following = asyncio.create_task(self.generate_and_hand_off(batch, self.loaded))
            if running is not None:
                await running
            running = following
        if running is not None:
            await running
        # Both loops also watch the stop flag: asyncio.wait_for on 3.11 can swallow a cancellation
        # that arrives as its timeout fires, and a loop that missed it must still end.
        for task in (heartbeat, feeder):
            task.cancel()
        await asyncio.wait([heartbeat, feeder], timeout=5.0)
        while not admitted.empty():
            await self.hand_back(admitted.get_nowait().items)
        await self.stop(consumer)

    async def feed(self, consumer, admitted: asyncio.Queue) -> None:
        """Collect, admit and hand on batches. One failed turn (a broker that is restarting under a
        prefetch change, an unexpected error) is logged and the next turn tries again: the feeder
        must not end while the worker lives (run() exits the worker if it does)."""
        batch_size = self.service.plans.current.batch_for(self.tier)
        while not self.service.stopping.is_set():
            try:
                batch_size = await self.feed_once(consumer, admitted, batch_size)
            except Exception as error:
                log.warning("feed_failed", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(FEED_RETRY_S)

    async def feed_once(self, consumer, admitted: asyncio.Queue, batch_size: int) -> int:
        plan = self.service.plans.current
        if plan.batch_for(self.tier) != batch_size:
            await consumer.set_prefetch(PREFETCH_BATCHES * plan.batch_for(self.tier))
            batch_size = plan.batch_for(self.tier)
        await self.slots.acquire()
        if self.service.stopping.is_set():  # waited for a slot while the worker began to stop: claim nothing
            self.slots.release()
            return batch_size
        try:
            deliveries = await self.collector.take(batch_size, self.settings.batch_wait_ms / 1000)
            batch = await self.admit(deliveries) if deliveries else None
        except BaseException:
            self.slots.release()
            raise
        if batch is not None:
            try:
                await admitted.put(batch)
            except asyncio.CancelledError:  # the worker stops while the model runs the batch before
                await self.hand_back(batch.items)
                raise
        else:
            self.slots.release()
        return batch_size

    async def heartbeat(self) -> None:
        """Tell the cluster what this GPU serves (hadis status --cluster shows it), and keep this
        worker's claims alive."""
        while not self.service.stopping.is_set():
            try:
                await self.beat()
            except Exception as error:
                log.warning("heartbeat_failed", error=str(error))
            await asyncio.sleep(self.settings.heartbeat_s)

    async def beat(self) -> None:
        info = {"tier": self.tier.value, "model": self.loaded.model.name, "host": self.settings.host,
                "pid": os.getpid(), "batch": self.service.plans.current.batch_for(self.tier),
                "plan_version": self.service.plans.current.version, "waiting": self.collector.waiting,
                "busy_until": round(self.busy_until, 3)}  # a stopping worker's agent waits for it (agent.py)
        await self.service.store.heartbeat_worker(self.settings.gpu, info, ttl_s=3 * self.settings.heartbeat_s,
                                                  owner=self.owner)

    async def hand_back(self, items: list[Item]) -> None:
        """Claimed, not started, and this worker stops: give the claims back before requeueing, so
        a redelivery that comes too late for this tier can still go to the light one (a claimed job
        cannot move, and would be shed). A failed hand-back leaves the claims to pass on when this
        worker's liveness key goes (stop clears it)."""
        changes = [hand_back(item.job_id, self.owner, escalated=item.task.escalated,
                             reason="its worker stopped before starting it") for item in items]
        try:
            await self.service.store.apply_many(changes)
        except Exception as error:
            log.warning("hand_back_failed", jobs=len(items), error=f"{type(error).__name__}: {error}")
        for item in items:
            await self.settle(item, Disposition.requeue)

    async def stop(self, consumer) -> None:
        """No new deliveries; hand back what was not started; let started batches finish (bounded)."""
        await consumer.cancel()
        for delivery in self.collector.drain_nowait():
            await delivery.settle(Disposition.requeue)
        if self.finishing:
            await asyncio.wait(self.finishing, timeout=self.settings.shutdown_grace_s)
        await self.service.store.clear_worker(self.settings.gpu, self.owner)
        await asyncio.get_running_loop().run_in_executor(self.gpu, self.host.close)
        self.gpu.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=False, cancel_futures=True)

    def planned_model(self) -> str:
        return self.service.plans.current.model_for(self.tier)

    async def ensure_model(self, wanted: str) -> None:
        if self.generator is not None and self.loaded.model.name == wanted:
            return
        model = self.profile.model(wanted)
        started = time.perf_counter()
        self.generator = await asyncio.get_running_loop().run_in_executor(self.gpu, self.host.load, model)
        log.info("model_loaded", tier=self.tier.value, model=wanted, seconds=round(time.perf_counter() - started, 3))

    async def generate_and_hand_off(self, batch: Batch, generator: Generator) -> None:
        items = batch.items
        try:
            results = await self.generate(items, generator)
        finally:
            self.slots.release()
        self.check_overrun(batch)
        while len(self.finishing) >= MAX_FINISHING_BATCHES:
            await asyncio.wait(self.finishing, return_when=asyncio.FIRST_COMPLETED)
        finishing = asyncio.create_task(self.finish(items, results, generator.model.name))
        self.finishing.add(finishing)
        finishing.add_done_callback(self.finishing.discard)

    def check_overrun(self, batch: Batch) -> None:
        """Admission let these jobs in on an estimate of when their batch ends; a batch that ends
        later than that by more than the handoff margin makes jobs admitted as in time end late.
        Counted (hadis_batch_overrun_seconds) and, past the margin, logged with the figures."""
        overrun = time.time() - batch.ends_by
        if overrun <= 0:
            return
        metrics.observe_batch_overrun(self.tier.value, batch.model, overrun)
        if overrun > HANDOFF_S:
            log.warning("batch_overran", model=batch.model, size=len(batch.items), seconds=round(overrun, 3),
                        margin_s=HANDOFF_S, estimated_end=round(batch.ends_by, 3),
                        busy_until=round(self.busy_until, 3))

    async def admit(self, deliveries: list[Delivery]) -> Batch | None:
        """Parse and check a batch for the plan's model, and claim its jobs (`generating`, owned by
        this worker) in one round trip; deliveries that are bad, expired, stale or duplicates are
        settled here and left out (shared/policies/steps.py decides what each claim's outcome
        means). None when no job is left to run."""
        parsed: list[Item] = []
        model = self.planned_model()
        finishes_at = self.batch_end(model, len(deliveries))
        for delivery in deliveries:
            if delivery.stale:
                log.info("stale_delivery_dropped")  # the broker has handed it out again
                continue
            try:
                task = parse_message(Task, delivery.body)
            except InvalidJob as error:
                job_id = job_id_of(delivery.body)
                await self.service.settle_failure(delivery, error, [job_id] if job_id else [], owned=False)
                continue
            duplicate = self.claimed.get(task.job.job_id) or next(
                (item for item in parsed if item.job_id == task.job.job_id), None)
            if duplicate is not None:
                duplicate.also.append(delivery)  # settled with the delivery this worker already holds
            elif ends_too_late(finishes_at, task.deadline):
                await self.too_late(delivery, task)
            else:
                parsed.append(Item(delivery, task))
        if parsed:
            self.busy_until, self.admitted_model = finishes_at, model
        started = {"tier": self.tier.value, "model": model}
        changes = [Change(item.job_id, JobState.generating, started, owner=self.owner) for item in parsed]
        try:
            outcomes = await self.service.store.apply_many(changes)
        except Exception as error:
            await self.settle_all(parsed, error)
            return None
        crash_point(f"{self.tier.value}.after_claim")
        items = []
        for item, outcome in zip(parsed, outcomes, strict=True):
            step = steps.after_claim(self.tier, outcome)
            if step is Next.work:
                self.claimed[item.job_id] = item
                items.append(item)
            else:
                await self.follow(item, step)
        return Batch(items, model, finishes_at) if items else None

    def batch_end(self, model: str, size: int) -> float:
        """When a batch of `size` admitted now for `model` would end (its time as measured here,
        else as profiled). The model before it is the last admitted batch's while batches are
        pending, else the one loaded."""
        now = time.time()
        previous = self.admitted_model if self.busy_until > now else self.loaded.model.name
        prior = profiled_batch_s(self.profile.model(model), size, self.settings.latency_scale)
        return batch_ends_at(now=now, busy_until=self.busy_until, batch_s=self.batch_s.expected(model, size, prior),
                             model=model, previous_model=previous, load_s=load_s(self.profile, model))

    async def follow(self, item: Item, step: Next, model: str | None = None) -> None:
        """Carry out a step decision for an item this worker does not generate (now); `model`
        made the light image this worker just stored."""
        with bind_job(item.job_id):
            if step is Next.wait:
                # A live worker is generating this job: look again later, holding the delivery
                # (acking it would lose the job if that worker then died).
                log.info("claim_held_elsewhere", recheck_s=steps.RECHECK_S)
                for delivery in (item.delivery, *item.also):
                    asyncio.get_running_loop().call_later(steps.RECHECK_S, self.collector.put, delivery)
            elif step is Next.no_record:
                await self.settle_all([item], InvalidJob("no job record (expired from the store?)"))
            elif step is Next.hand_on:
                await self.hand_on(item, model)
            else:
                log.info("duplicate_delivery_dropped")
                await self.settle(item, Disposition.ack)

    async def reroute_to_light(self, task: Task) -> bool:
        """Record the job as routed to the light tier, then hand it there. Only a job still
        `routed` can move (the store's re-route); one a heavy worker has claimed (it died mid-batch,
        so this is a redelivery) cannot go back a step, and a light worker's claim would be refused
        as stale, leaving the job unfinished: it is shed instead (the caller expires it)."""
        moved = await self.service.store.apply(Change(task.job.job_id, JobState.routed, {"tier": Tier.light.value}))
        if not moved.applied:
            log.info("not_rerouted", state=moved.before.value if moved.before else None)
            return False
        light_task = task.model_copy(update={"tier": Tier.light})
        await self.service.bus.publish(self.service.bus.queues.tier(Tier.light), light_task, message_id=task.job.job_id)
        log.info("rerouted_to_light", reason="the heavy tier cannot finish it in time")
        return True

    async def settle(self, item: Item, disposition: Disposition) -> None:
        self.claimed.pop(item.job_id, None)
        for delivery in (item.delivery, *item.also):
            await delivery.settle(disposition)

    async def too_late(self, delivery: Delivery, task: Task) -> None:
        """A job this GPU cannot finish by its deadline. Shedding it (expired) saves the GPU time
        for jobs that can still make theirs. A heavy job with a cheaper way out takes it instead:
        an escalated job is served the light image it already has, and a job the router sent
        straight to heavy goes to the light tier when a light batch can still make it."""
        with bind_job(task.job.job_id):
            plan = self.service.plans.current
            light_s = profiled_batch_s(self.profile.model(plan.light_model), plan.light_batch,
                                       self.settings.latency_scale)
            fallback = too_late_fallback(self.tier, task.escalated,
                                         light_can_make(plan, light_s, time.time(), task.deadline))
            try:
                if fallback is Fallback.serve_light and await self.serve_light_image(
                        task, "the heavy model could not finish in time: served the light image"):
                    await delivery.settle(Disposition.ack)
                    return
                if fallback is Fallback.to_light and await self.reroute_to_light(task):
                    await delivery.settle(Disposition.ack)
                    return
            except Exception as error:
                await self.service.settle_failure(delivery, error, [task.job.job_id])
                return
            reason = ("deadline passed before generation" if time.time() >= task.deadline
                      else "would finish after its deadline")
            await self.service.settle_failure(delivery, Expired(reason), [task.job.job_id])

    async def serve_light_image(self, task: Task, reason: str) -> bool:
        """Finish the job with the light image it already has (stored once: the light key becomes
        the final one). False when there is none."""
        outcome = await self.service.store.apply(serve_light(task.job.job_id, reason))
        if outcome.applied:
            metrics.observe_done(Tier.light.value, task.job.submitted_at, task.deadline)
        return outcome.result is not Applied.no_image

    async def settle_all(self, items: list[Item], error: BaseException) -> None:
        for item in items:
            with bind_job(item.job_id):
                self.claimed.pop(item.job_id, None)
                await self.service.settle_failure(item.delivery, error, [item.job_id], also=item.also)

    async def generate(self, items: list[Item], generator: Generator) -> list[Image.Image | BaseException]:
        """Generate off the event loop; a failed batch is split so one bad job fails alone."""
        inputs = [
            GenerationInput(item.job_id, item.task.job.prompt, item.task.job.negative_prompt, seed_of(item.task),
                            item.task.job.width, item.task.job.height)
            for item in items
        ]
        loop = asyncio.get_running_loop()
        try:
            generated = await loop.run_in_executor(self.gpu, generator.generate_timed, inputs)
            self.batch_s.observe(generator.model.name, len(inputs), generated.seconds)
            metrics.observe_batch(self.tier.value, generator.model.name, len(inputs), generated.seconds,
                                  generated.busy_s)
            return list[Image.Image | BaseException](generated.images)
        except ModelProcessFailed:
            raise  # not this batch's fault: the worker stops, and the broker redelivers its jobs
        except Exception as error:
            if len(items) == 1:
                return [error]
            log.warning("batch_failed_splitting", size=len(items), error=str(error))
            results: list[Image.Image | BaseException] = []
            for item in items:
                results += await self.generate([item], generator)
            return results

    async def finish(self, items: list[Item], results: list, model_name: str) -> None:
        """Encode, store (one round trip for the batch), pass light results to the judge, ack."""
        pngs = await asyncio.get_running_loop().run_in_executor(self.io, encode_all, results)
        generated, changes = [], []
        for item, png in zip(items, pngs, strict=True):
            if isinstance(png, BaseException):
                await self.settle_all([item], BackendFailed(f"{type(png).__name__}: {png}"))
            else:
                generated.append(item)
                changes.append(self.result_change(item.task, png, model_name))
        try:
            outcomes = await self.service.store.apply_many(changes)
        except Exception as error:
            await self.settle_all(generated, error)
            return
        crash_point(f"{self.tier.value}.after_store")
        if self.tier is Tier.heavy:
            for item, outcome in zip(generated, outcomes, strict=True):
                if outcome.applied:
                    metrics.observe_done(Tier.heavy.value, item.task.job.submitted_at, item.task.deadline)
        await asyncio.gather(*(self.follow(item, steps.after_store(self.tier, outcome),
                                           model_name if outcome.applied else None)
                               for item, outcome in zip(generated, outcomes, strict=True)))

    def result_change(self, task: Task, png: bytes, model_name: str) -> Change:
        fields = {"tier": self.tier.value, "model": model_name}
        if self.tier is Tier.heavy:
            return Change(task.job.job_id, JobState.done, {**fields, "escalated": task.escalated}, image=png)
        return Change(task.job.job_id, JobState.judging, fields, image=png, image_variant="light")

    async def hand_on(self, item: Item, model: str | None) -> None:
        """A stored light result goes to the judge, then the delivery is acked. When the judge's
        queue refuses it (full), the job is served the light image it already has. `model` made
        the image (None: an earlier delivery stored it; the record says which)."""
        try:
            judged = item.task.model_copy(update={"model": model or await self.light_model_of(item)})
            try:
                await self.service.bus.publish(self.service.bus.queues.judge, judged, message_id=item.job_id)
            except Overloaded:
                await self.serve_light_image(item.task, "the judge's queue is full: served the light image")
            crash_point("light.after_publish")
            await self.settle(item, Disposition.ack)
        except Exception as error:
            await self.settle_all([item], error)

    async def light_model_of(self, item: Item) -> str:
        """The model that made the stored light image (the record says; this worker's model when
        the record does not)."""
        record = await self.service.store.get(item.job_id)
        return (record.model if record is not None and record.model else None) or self.loaded.model.name


def encode_all(results: list) -> list[bytes | BaseException]:
    return [result if isinstance(result, BaseException) else encode_png(result) for result in results]


async def main(service: Service) -> None:
    await TierWorker(service, service.settings.tier).run()


if __name__ == "__main__":
    run("worker", main)
