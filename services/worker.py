"""The worker: one program for both tiers (HADIS_TIER=light|heavy). It owns one GPU (or an
emulated one), loads the model the plan names for its tier, and pipelines its work:
while the model runs batch k, batch k+1 is being collected and batch k-1's images
are being encoded and stored. Generation and PNG encoding never run on the event loop.

Light results go to the quality judge; heavy results finish the job (and so do a batch-class
job's light ones: services/handoff.py final_here). A worker takes two service classes, interactive
first, and stops a batch-class batch for interactive work that would be late behind it
(services/classes_intake.py).

Three parts, one concern each: `TierWorker` collects, admits and runs batches (the decisions are
shared/policies/engine.py's, which the simulator calls too); `ModelSlot` holds the model and
generates off the event loop; `Handoff` (services/handoff.py) stores results, hands them on and
settles deliveries.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from services.cancels import RunningJobs
from services.classes_intake import ClassIntake, Yields
from services.handoff import Clock, Handoff
from services.previews import PreviewWriter
from shared import metrics
from shared.backends import encode_image
from shared.backends.base import Generated, GenerationInput, Generator
from shared.backends.control import GenerationCancelled, GenerationPaused
from shared.backends.hosts import make_host
from shared.backends.model_process import ModelProcessFailed
from shared.backends.previews import PreviewSink
from shared.batching import Taken
from shared.bus import Delivery
from shared.errors import Disposition
from shared.intake import Claimed, intake, parse_task
from shared.logging import get_logger
from shared.policies import engine
from shared.policies.admission import HANDOFF_S, PIPELINE_DEPTH
from shared.policies.engine import BatchTimes, Pipeline
from shared.policies.previews import previews_for
from shared.profiles import Profile, load_profile
from shared.schemas import Job, Priority, Task, Tier
from shared.service import Service, run
from shared.settings import Settings
from shared.store import owner_id

log = get_logger(__name__)

# Batches whose images are being encoded and stored at once (bounds the memory they hold).
MAX_FINISHING_BATCHES = 2
FEED_RETRY_S = 0.5  # after a failed turn of the feeder



@dataclass
class Batch:
    """Jobs admitted together, for one model: they run with it even when the plan has changed the
    tier's model since (admission timed them with it; run with another, they would end at another
    time: a batch admitted for sd35-medium and run with sd35-large ended 14 s after its estimate).
    The model is swapped between batches, where admission expected it."""

    items: list[Claimed]
    model: str
    ends_by: float  # when admission expected it to end (the batches ahead of it and a model load included)
    priority: Priority = "interactive"  # the service class it was formed from (services/classes_intake.py)
    guest: bool = False  # from the guest tier's batch queue, run with its model (classes.guest_tier)
    first_step: int = 0  # a paused batch resumed: the steps it had run
    yielded: bool = field(default=False, compare=False)  # a batch-class batch stopped for interactive work
    pausing: bool = field(default=False, compare=False)  # ... and paused, not stopped (it resumes)
    began: bool = field(default=False, compare=False)  # the model's thread took it up (not stopped before)
    stopped_at_step: int | None = field(default=None, compare=False)  # the step it had reached when stopped
    holds_slot: bool = field(default=True, compare=False)  # its pipeline slot, until it ends or is stopped

    def begin(self) -> None:
        """On the model's thread, as the batch is about to run: raises when it was stopped (or
        paused, at the step it had reached) for interactive work before it began."""
        if self.yielded:
            raise GenerationPaused(self.first_step) if self.pausing else GenerationCancelled("stopped before it began")
        self.began = True


def wants_previews(item: Claimed) -> int:
    """The previews this generation makes for the job (none for an escalated job's heavy one:
    shared/policies/previews.py)."""
    return previews_for(item.task.job.partial_images, item.task.escalated)


def seed_of(task: Task) -> int:
    """The job's seed, or one derived from its id, so that a redelivered job draws the same image."""
    if task.job.seed is not None:
        return task.job.seed
    return int.from_bytes(hashlib.blake2b(task.job.job_id.encode(), digest_size=4).digest(), "big")


def check_overrun(tier: Tier, pipeline: Pipeline, now: float, batch: Batch) -> None:
    """Admission let these jobs in on an estimate of when their batch ends; a batch that ends
    later than that by more than the handoff margin makes jobs admitted as in time end late.
    Counted (hadis_batch_overrun_seconds) and, past the margin, logged with the figures."""
    overrun = now - batch.ends_by
    if overrun <= 0:
        return
    metrics.observe_batch_overrun(tier.value, batch.model, overrun)
    if overrun > HANDOFF_S:
        log.warning("batch_overran", model=batch.model, size=len(batch.items), seconds=round(overrun, 3),
                    margin_s=HANDOFF_S, estimated_end=round(batch.ends_by, 3),
                    busy_until=round(pipeline.busy_until, 3))


class TierWorker:
    """The batch loop: a feeder collects and admits batch k+1 while the model runs batch k."""

    def __init__(self, service: Service, tier: Tier, clock: Clock = time.time) -> None:
        self.service = service
        self.tier = tier
        self.settings = service.settings
        self.clock = clock  # every decision's "now" (the replay test gives its own)
        self.profile = load_profile(self.settings.profile)
        self.times = BatchTimes(self.profile, self.settings.latency_scale)
        self.intake = ClassIntake(service, tier)  # the tier queue, the batch queue, the guest tier's batch queue
        self.collector = self.intake.collectors
        self.pipeline = Pipeline()  # what admission has committed this GPU to
        self.model = ModelSlot(self.settings, self.profile, tier, self.pipeline)
        self.slots = asyncio.Semaphore(PIPELINE_DEPTH)
        # Who holds this worker's claims: unique per start, even when a pid comes round again.
        owner = owner_id(self.settings.gpu, os.getpid(), self.settings.worker_instance or secrets.token_hex(4))
        self.hands = Handoff(service, tier, owner, self.collector, self.model, self.times, clock)
        # The guest tier's model, loaded beside this one when its batch work first comes, and its
        # jobs' handoff (claimed, stored and falling back as that tier's): classes.guest_tier.
        guest = self.intake.guest or tier
        self.guest_model = ModelSlot(self.settings, self.profile, guest, self.pipeline, beside=self.model)
        self.guest_hands = Handoff(service, guest, owner, self.collector, self.guest_model, self.times, clock,
                                   claimed=self.hands.claimed, guest=True)
        self.jobs = RunningJobs(service, tier, self.hands.claimed, lambda: self.model.generator)
        self.classes = Yields(service, tier, self.pipeline, self.slot_for, self.times, self.intake, clock,
                              give_slot=self.give_slot)
        self.admission = Admission(service, tier, self.pipeline, self.model, self.hands, self.guest_hands,
                                   self.classes, self.times, clock)
        self.previews = PreviewWriter(service)
        self.finishing: set[asyncio.Task] = set()

    @property
    def queue(self) -> str:
        return self.service.bus.queues.tier(self.tier)

    async def run(self) -> None:
        """Two stages: a feeder collects and admits batch k+1 while the model runs batch k; the
        finishing of batch k-1 (PNG, store, hand-on) runs as a task of its own."""
        await self.model.ensure(self.planned_model())
        self.pipeline.model = self.model.name
        await self.beat()  # the claims' owner is alive before the first claim
        # Cancels are heard before the first claim; progress is written while batches run (services/cancels.py).
        watchers = [asyncio.create_task(self.jobs.watch(), name="cancels"),
                    asyncio.create_task(self.jobs.report(), name="progress")]
        await self.intake.start(self.service.plans.current.batch_for(self.tier))
        metrics.mark_ready("worker")
        log.info("worker_ready", tier=self.tier.value, model=self.model.name, gpu=self.settings.gpu)
        heartbeat = asyncio.create_task(self.heartbeat(), name="heartbeat")
        admitted: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        feeder = asyncio.create_task(self.feed(admitted), name="feeder")
        running: list[asyncio.Task] = []  # batches handed to the model (in order) and not yet handed on
        while not self.service.stopping.is_set():
            if feeder.done():
                # A feeder that died would leave a worker with a green heartbeat and a stopped tier:
                # exit instead, and let the agent start a fresh one (its deliveries are redelivered).
                error = None if feeder.cancelled() else feeder.exception()
                raise RuntimeError(f"the feeder stopped: {type(error).__name__}: {error}")
            running = still_running(running)
            if not running and admitted.empty():
                await self.model.ensure(self.planned_model())  # idle: take the plan's model now
            try:
                batch = await asyncio.wait_for(admitted.get(), timeout=1.0)
            except TimeoutError:
                continue
            slot = self.slot_for(batch)  # its own model's, or the guest model's beside it (one host)
            if not slot.holds(batch.model):  # the plan changed the model: after the batches ahead
                self.classes.next_on_model(batch)  # those giving way to it stop now, not at their end
                await asyncio.gather(*running)
                await slot.ensure(batch.model)
            while len(running) > PIPELINE_DEPTH:  # bounded: a batch not yet handed on holds its images
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = still_running(running)
            # Each batch goes to the model's executor as soon as it is admitted, without waiting for
            # the batches ahead to be handed on: the model's thread starts it the moment the one
            # ahead ends (or pauses for it), without a round trip through the event loop.
            running.append(asyncio.create_task(self.generate_and_hand_off(batch, slot)))
        await asyncio.gather(*running)
        await self.wind_down([heartbeat, feeder, *watchers], admitted)

    async def wind_down(self, loops: list[asyncio.Task], admitted: asyncio.Queue) -> None:
        # The loops also watch the stop flag: asyncio.wait_for on 3.11 can swallow a cancellation
        # that arrives as its timeout fires, and a loop that missed it must still end.
        for task in loops:
            task.cancel()
        await asyncio.wait(loops, timeout=5.0)
        while not admitted.empty():
            batch = admitted.get_nowait()
            await self.hands_for(batch).hand_back(batch.items)
        await self.classes.release(self.hands_for)
        await self.stop()

    def give_slot(self, batch: Batch) -> None:
        """The batch's pipeline slot, free for the next batch: when it ends, or as soon as it is
        stopped for interactive work (Yields.stop), so that the interactive batch is admitted and
        handed to the model behind it while it runs to its next step, not after it stopped."""
        if batch.holds_slot:
            batch.holds_slot = False
            self.slots.release()

    def slot_for(self, batch: Batch) -> ModelSlot:
        return self.guest_model if batch.guest else self.model

    def hands_for(self, batch: Batch) -> Handoff:
        return self.guest_hands if batch.guest else self.hands

    async def feed(self, admitted: asyncio.Queue) -> None:
        """Collect, admit and hand on batches. One failed turn (a broker that is restarting under a
        prefetch change, an unexpected error) is logged and the next turn tries again: the feeder
        must not end while the worker lives (run() exits the worker if it does)."""
        while not self.service.stopping.is_set():
            try:
                await self.feed_once(admitted)
            except Exception as error:
                log.warning("feed_failed", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(FEED_RETRY_S)

    async def feed_once(self, admitted: asyncio.Queue) -> None:
        """One batch: of the class classes.next_class names, at the plan's batch size."""
        batch_size = self.service.plans.current.batch_for(self.tier)
        await self.intake.follow_plan(batch_size)
        await self.slots.acquire()
        if self.service.stopping.is_set():  # waited for a slot while the worker began to stop: claim nothing
            self.slots.release()
            return
        try:
            taken = await self.intake.take(batch_size, self.settings.batch_wait_ms / 1000,
                                           self.intake.batch_first)
            batch = await self.admission.taken(*taken) if taken else None
        except BaseException:
            self.slots.release()
            raise
        if batch is None:
            self.slots.release()
            return
        try:
            await admitted.put(batch)
        except asyncio.CancelledError:  # the worker stops while the model runs the batch before
            self.classes.ended(batch)
            await self.hands_for(batch).hand_back(batch.items)
            raise

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
        plan = self.service.plans.current
        info = {"tier": self.tier.value, "model": self.model.name, "host": self.settings.host, "pid": os.getpid(),
                "batch": plan.batch_for(self.tier), "plan_version": plan.version, "waiting": self.collector.waiting,
                "batch_waiting": self.collector.batch.waiting,
                "busy_until": round(self.pipeline.busy_until, 3)}  # a stopping worker's agent waits for it (agent.py)
        await self.service.store.heartbeat_worker(self.settings.gpu, info, ttl_s=3 * self.settings.heartbeat_s,
                                                  owner=self.hands.owner)

    async def stop(self) -> None:
        """No new deliveries; hand back what was not started; let started batches finish (bounded)."""
        await self.intake.cancel()
        for delivery in self.collector.drain_nowait():
            await delivery.settle(Disposition.requeue)
        if self.finishing:
            await asyncio.wait(self.finishing, timeout=self.settings.shutdown_grace_s)
        await self.service.store.clear_worker(self.settings.gpu, self.hands.owner)
        await self.guest_model.close()
        await self.model.close()

    def planned_model(self) -> str:
        return self.service.plans.current.model_for(self.tier)

    async def generate_and_hand_off(self, batch: Batch, slot: ModelSlot) -> None:
        """Generate the batch (less its jobs cancelled meanwhile), then hand its images on (less
        those whose jobs were cancelled while it ran: services/cancels.py)."""
        generator, hands = slot.loaded, self.hands_for(batch)
        try:
            items, _ = await self.jobs.drop_cancelled(batch.items, hands.settle)
            with self.jobs.running([item.job_id for item in items], generator):
                results = await slot.generate(items, generator, self.previews, batch.priority, batch.begin,
                                              batch.first_step, lambda: self.classes.next_on_model(batch)) \
                    if items else []
        finally:
            self.give_slot(batch)
            self.classes.ended(batch)
        if batch.yielded:
            items, results = await self.classes.after(batch, items, results, generator, hands, self.jobs)
        items, results = await self.jobs.drop_cancelled(items, hands.settle, results)
        if not items:
            return
        check_overrun(self.tier, self.pipeline, self.clock(), batch)
        while len(self.finishing) >= MAX_FINISHING_BATCHES:
            await asyncio.wait(self.finishing, return_when=asyncio.FIRST_COMPLETED)
        finishing = asyncio.create_task(hands.finish(items, results, generator.model.name))
        self.finishing.add(finishing)
        finishing.add_done_callback(self.finishing.discard)


class Admission:
    """Batches admitted from what the collectors give (ClassCollectors.take): a paused batch
    resumed, or deliveries timed for the plan's model, their late jobs sent to the fallback and the
    rest claimed. The decisions are shared/policies/engine.py's, which the simulator calls too."""

    def __init__(self, service: Service, tier: Tier, pipeline: Pipeline, model: ModelSlot, hands: Handoff,
                 guest_hands: Handoff, classes: Yields, times: BatchTimes, clock: Clock) -> None:
        self.service, self.tier, self.pipeline, self.model, self.times, self.clock = \
            service, tier, pipeline, model, times, clock
        self.hands, self.guest_hands, self.classes = hands, guest_hands, classes

    async def taken(self, taken: Taken, deliveries: list[Delivery]) -> Batch | None:
        """A batch from what the collectors gave: a paused batch resumed, or deliveries admitted."""
        if taken == "paused":
            return self.classes.resume(self.model.name)
        if not deliveries:
            return None
        return await self.admit(deliveries, "interactive" if taken == "interactive" else "batch",
                                guest=taken == "guest")

    async def admit(self, deliveries: list[Delivery], priority: Priority = "interactive",
                    guest: bool = False) -> Batch | None:
        """Take a batch in (shared/intake.py), time it for the plan's model and shed what cannot end
        in time (shared/policies/engine.py), and claim the rest (`generating`, owned by this worker)
        in one round trip; shared/policies/steps.py decides what each claim's outcome means. None
        when no job is left to run. A guest batch is timed, claimed and falls back as the guest
        tier's, with its model, loaded beside this worker's own (no load either way)."""
        hands = self.guest_hands if guest else self.hands
        model = self.service.plans.current.model_for(hands.tier)
        ends_at = self.pipeline.batch_end(self.clock(), model, len(deliveries),
                                          loaded=model if guest else self.model.name, times=self.times)
        taken = await intake(self.service, deliveries, parse_task, held=hands.claimed)
        in_time, late = engine.split_late(taken, ends_at, lambda item: item.task.deadline)
        for item in late:
            await hands.too_late(item)
        if in_time:
            self.pipeline.commit(ends_at, self.pipeline.model if guest and self.pipeline.model else model)
        items = await hands.claim(in_time, model)
        if not items:
            return None
        batch = Batch(items, model, ends_at, priority, guest=guest)
        self.classes.admitted(batch)
        return batch


class ModelSlot:
    """The model this worker runs, in its host (a process of its own, for torch models): loaded on
    the plan's word, and run on an executor of its own, never on the event loop. A guest slot (the
    guest tier's model, classes.guest_tier) shares its host and executors with the worker's own
    slot (`beside`): both models stay loaded, and their batches run one after another on the one
    executor, pipelined as the batches of one model are."""

    def __init__(self, settings: Settings, profile: Profile, tier: Tier, pipeline: Pipeline,
                 beside: ModelSlot | None = None) -> None:
        self.settings, self.profile, self.tier, self.pipeline = settings, profile, tier, pipeline
        if beside is None:
            self.host = make_host(settings)
            self.gpu = ThreadPoolExecutor(self.host.concurrent_batches, thread_name_prefix=f"gpu-{tier.value}")
            self.io = ThreadPoolExecutor(2, thread_name_prefix=f"io-{tier.value}")
        else:
            self.host, self.gpu, self.io = beside.host, beside.gpu, beside.io
            beside.other = self
        self.other: ModelSlot | None = beside  # the slot whose model stays loaded beside this one's
        self.owns_host = beside is None
        self.generator: Generator | None = None

    @property
    def loaded(self) -> Generator:
        """The generator of the model loaded now (ensure loads one before anything runs)."""
        assert self.generator is not None, "no model loaded yet"
        return self.generator

    @property
    def name(self) -> str:
        return self.loaded.model.name

    def holds(self, model: str) -> bool:
        return self.generator is not None and self.name == model

    async def ensure(self, wanted: str) -> None:
        if self.generator is not None and self.name == wanted:
            return
        model = self.profile.model(wanted)
        started = time.perf_counter()
        keep = [self.other.name] if self.other is not None and self.other.generator is not None else []
        self.generator = await asyncio.get_running_loop().run_in_executor(self.gpu, self.host.load, model, keep)
        log.info("model_loaded", tier=self.tier.value, model=wanted, seconds=round(time.perf_counter() - started, 3))

    async def generate(self, items: list[Claimed], generator: Generator, previews: PreviewWriter | None = None,
                       priority: Priority = "interactive", begin: Callable[[], None] = lambda: None,
                       first_step: int = 0, queued: Callable[[], None] = lambda: None
                       ) -> list[Image.Image | BaseException]:
        """Generate off the event loop; a failed batch is split so one bad job fails alone. The
        jobs' previews (if any asked: services/previews.py) are stored before the images return,
        so a job's stream never sees its image before the previews it was promised."""
        inputs = [GenerationInput(item.job_id, item.task.job.prompt, item.task.job.negative_prompt, seed_of(item.task),
                                  item.task.job.width, item.task.job.height, wants_previews(item),
                                  item.task.job.output_format) for item in items]
        on_preview = previews.sink_for(generator.model.name, inputs) if previews is not None else None
        try:
            running = asyncio.get_running_loop().run_in_executor(self.gpu, run_unless_stopped, begin, generator,
                                                                 inputs, on_preview, first_step)
            queued()  # the model's thread has it: what runs before it may stop now, and it follows at once
            generated = await running
            if first_step == 0:  # a resumed batch's time is not a whole batch's
                self.pipeline.timer.observe(generator.model.name, len(inputs), generated.seconds)
            metrics.observe_batch(self.tier.value, generator.model.name, len(inputs), generated.seconds,
                                  generated.busy_s)
            metrics.observe_class_busy(self.tier.value, priority, generated.busy_s)
            if previews is not None and on_preview is not None:
                await previews.drain()
            return list[Image.Image | BaseException](generated.images)
        except ModelProcessFailed:
            raise  # not this batch's fault: the worker stops, and the broker redelivers its jobs
        except (GenerationCancelled, GenerationPaused) as stopped:
            return [stopped] * len(items)  # every job of it was cancelled, or it was paused: the model stopped early
        except Exception as error:
            if len(items) == 1:
                return [error]
            log.warning("batch_failed_splitting", size=len(items), error=str(error))
            results: list[Image.Image | BaseException] = []
            for item in items:
                results += await self.generate([item], generator, previews, priority)
            return results

    async def encode(self, results: list, jobs: list[Job] | None = None) -> list[bytes | BaseException]:
        return await asyncio.get_running_loop().run_in_executor(self.io, encode_all, results, jobs)

    async def close(self) -> None:
        if not self.owns_host:  # the slot it is beside closes the host
            return
        await asyncio.get_running_loop().run_in_executor(self.gpu, self.host.close)
        self.gpu.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=False, cancel_futures=True)


def still_running(tasks: list[asyncio.Task]) -> list[asyncio.Task]:
    """The batch tasks not ended; one that ended raises here what it raised (a model process that
    keeps dying ends the worker: its deliveries are redelivered)."""
    for task in tasks:
        if task.done():
            task.result()
    return [task for task in tasks if not task.done()]


def run_unless_stopped(begin: Callable[[], None], generator: Generator, inputs: list[GenerationInput],
                       on_preview: PreviewSink | None, first_step: int = 0) -> Generated:
    """On the model's thread: the batch (from `first_step`, a paused one resumed), unless it was
    stopped before it began (`begin` raises: a batch-class batch that gave way to interactive work
    while it waited behind another)."""
    begin()
    return generator.generate_timed(inputs, on_preview, first_step)


def encode_all(results: list, jobs: list[Job] | None = None) -> list[bytes | BaseException]:
    """Each image encoded once, in its job's output format (png without jobs)."""
    formats = [(job.output_format, job.output_compression) for job in jobs] if jobs else [("png", None)] * len(results)
    return [result if isinstance(result, BaseException) else encode_image(result, *fmt)
            for result, fmt in zip(results, formats, strict=True)]


async def main(service: Service) -> None:
    await TierWorker(service, service.settings.tier).run()


if __name__ == "__main__":
    run("worker", main)
