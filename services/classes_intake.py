"""A tier worker's two service classes (docs/classes.md): what it takes first, and the batch-class
batches it stops for interactive work. The rules are pure and shared with the simulator:
shared/policies/classes.py (next_class, should_yield) and the worker's part of
shared/policies/engine.py (batch_class_yields, interactive_free_at); this module is their I/O.

Two queues, interactive first. A worker consumes its tier queue (interactive jobs) and its tier's
batch queue (`<ns>.tier.<tier>.batch`) on two consumers, each into a collector of its own
(shared/batching.py ClassCollectors). Each batch is formed from one class, interactive first
(batch first on a GPU the plan reserves for batch, Plan.batch_first), and goes through the same
admission as ever (deadlines, split_late, claims) at the plan's batch size for the tier. Separate
queues rather than message priorities in one queue: a priority queue orders only what the broker
holds, not what a worker has prefetched, and a 5,000-job backlog would fill every worker's
prefetch ahead of the interactive jobs that arrive next; two queues let each class have its own
prefetch and let a worker look at what waits in each.

The batch consumer's prefetch is PIPELINE_DEPTH batches (BATCH_PREFETCH_BATCHES), against the
interactive one's PREFETCH_BATCHES. A delivery a worker holds is held from every other GPU: with
interactive work first, a busy worker would park batch jobs in its buffer that another GPU's idle
time could serve, and a backlog submitted at once would land in the first workers' buffers. Two
batches keep a GPU with nothing else to do busy with batch work (one generating, the next queued
behind it on the model's thread), and no more are parked.

A guest queue. A light worker with Settings.batch_colocate also consumes the heavy tier's batch
queue (classes.guest_tier) into a third collector, with the same small prefetch, and runs those
jobs with the heavy model, loaded beside its own (a second ModelSlot on the same host, so that the
batches of both pipeline as one model's do: services/worker.py), when
it has no work of its own (classes.batch_source): the light tier's idle time, most of what the
interactive plan leaves, serves batch work at the heavy model's quality.

Yield. When an interactive job arrives while batch-class batches are admitted to this GPU (the one
generating, or the one queued behind it: engine.Pipeline, PIPELINE_DEPTH), engine.batch_class_yields
says, with Settings.batch_yield, whether they give way (in "pause" and "step" modes, as
classes.should_yield rules: when the job can still end in time if served once they do). The
pipeline's estimate is rewound to the interactive batches ahead (interactive_free_at), so the
interactive job is admitted as in time, and once its batch is queued on the model behind them (at
once when every pipeline slot is taken: they give their slots back, and it is admitted while they
run to their next step) they are flagged in the model's control block, as a cancel flags a batch
(services/cancels.py, shared/backends/control.py): the model stops at its next denoising step and
its thread goes straight on to the interactive batch (the emulated backend sleeps step by step and
stops the same way).

- "pause" (a model that can: Generator.can_pause): the batch is held here, its claims and
  deliveries kept, and taken again (`resume`) once no interactive job waits, from the step it
  reached; nothing is lost. A worker that stops hands its paused batches back as below.
- "step", or a model that cannot pause: the stopped batch's jobs are handed back
  (services/handoff.py give_back): their claims return to `routed`, they are published again to
  their batch queue with their deadlines, and run later; nothing was stored, so none is stored
  twice. The steps run are lost, counted in hadis_batch_yields_total and
  hadis_batch_yield_lost_seconds_total.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from services.cancels import RunningJobs
from services.handoff import Clock, Handoff
from shared import metrics
from shared.backends.base import Generator
from shared.backends.control import GenerationCancelled, GenerationPaused
from shared.batching import ClassCollectors, Taken
from shared.bus import Delivery
from shared.errors import Disposition
from shared.intake import Claimed, parse_task
from shared.logging import bind_job, get_logger
from shared.policies import classes, engine
from shared.policies.admission import PIPELINE_DEPTH, PREFETCH_BATCHES
from shared.policies.engine import BatchTimes, InFlight, Pipeline
from shared.schemas import Tier
from shared.service import Service
from shared.store import hand_back

if TYPE_CHECKING:
    from services.worker import Batch, ModelSlot

log = get_logger(__name__)

BATCH_PREFETCH_BATCHES = PIPELINE_DEPTH  # the batch queue's prefetch, in batches (the module's docstring says why)
YIELD_REASON = "its batch was stopped at a step for interactive work: it runs again later"


class ClassIntake:
    """The worker's consumers (interactive, batch, and the guest tier's batch queue) and their collectors."""

    def __init__(self, service: Service, tier: Tier) -> None:
        self.service, self.tier = service, tier
        self.guest = classes.guest_tier(tier, service.settings.batch_colocate)
        self.collectors = ClassCollectors()
        self.consumers: list = []
        self.batch_size = self.guest_size = 0
        self.on_interactive: Callable[[Delivery], None] = lambda delivery: None

    @property
    def queues(self) -> tuple[str, str]:
        queues = self.service.bus.queues
        return queues.tier(self.tier), queues.batch(self.tier)

    def plan_guest_size(self) -> int:
        return self.service.plans.current.batch_for(self.guest) if self.guest is not None else 0

    def batch_first(self) -> bool:
        """This GPU takes batch-class jobs first (the plan reserved it: classes.place_batch)."""
        return self.service.settings.gpu in self.service.plans.current.batch_first

    async def start(self, batch_size: int) -> None:
        interactive, batch = self.queues
        bus = self.service.bus
        self.consumers = [await bus.consume(interactive, self.put_interactive, prefetch=PREFETCH_BATCHES * batch_size)]
        self.consumers.append(await bus.consume(batch, self.put_batch, prefetch=BATCH_PREFETCH_BATCHES * batch_size))
        self.batch_size = batch_size
        if self.guest is not None:
            self.guest_size = self.plan_guest_size()
            self.consumers.append(await bus.consume(bus.queues.batch(self.guest), self.put_guest,
                                                    prefetch=BATCH_PREFETCH_BATCHES * self.guest_size))

    async def put_interactive(self, delivery: Delivery) -> None:
        self.collectors.interactive.put(delivery)
        self.on_interactive(delivery)

    async def put_batch(self, delivery: Delivery) -> None:
        self.collectors.batch.put(delivery)

    async def put_guest(self, delivery: Delivery) -> None:
        self.collectors.guest.put(delivery)

    async def follow_plan(self, batch_size: int) -> None:
        """The prefetches follow the plan's batch sizes (a failure is retried at the next turn)."""
        if batch_size != self.batch_size:
            interactive, batch = self.consumers[:2]
            await interactive.set_prefetch(PREFETCH_BATCHES * batch_size)
            await batch.set_prefetch(BATCH_PREFETCH_BATCHES * batch_size)
            self.batch_size = batch_size
        if self.guest is not None and (guest_size := self.plan_guest_size()) != self.guest_size:
            await self.consumers[2].set_prefetch(BATCH_PREFETCH_BATCHES * guest_size)
            self.guest_size = guest_size

    async def take(self, batch_size: int, max_wait_s: float, batch_first: Callable[[], bool]
                   ) -> tuple[Taken, list[Delivery]] | None:
        return await self.collectors.take(batch_size, max_wait_s, batch_first, guest_size=self.plan_guest_size())

    async def cancel(self) -> None:
        for consumer in self.consumers:
            await consumer.cancel()


def deadline_of(delivery: Delivery) -> float | None:
    """The deadline a tier queue's message carries (None when it does not parse: intake will
    dead-letter it)."""
    try:
        return parse_task(delivery).deadline
    except Exception:
        return None


class Yields:
    """The batches admitted to this GPU and not ended (in order), the batch-class ones stopped for
    interactive work, and those paused, held until they resume (the module's docstring)."""

    def __init__(self, service: Service, tier: Tier, pipeline: Pipeline, slot_for: Callable[[Batch], ModelSlot],
                 times: BatchTimes, intake: ClassIntake, clock: Clock,
                 give_slot: Callable[[Batch], None] = lambda batch: None) -> None:
        self.service, self.tier, self.pipeline, self.slot_for, self.times = service, tier, pipeline, slot_for, times
        self.intake, self.clock, self.give_slot = intake, clock, give_slot
        self.inflight: list[Batch] = []
        self.paused: list[Batch] = []  # oldest first: each resumes from its first_step
        # batch-class batches to stop once the interactive batch they give way to is queued on the model
        self.giving_way: list[Batch] = []
        intake.on_interactive = self.on_interactive
        intake.collectors.paused = lambda: len(self.paused)

    def admitted(self, batch: Batch) -> None:
        """A batch admitted to this GPU."""
        self.inflight.append(batch)

    def next_on_model(self, batch: Batch) -> None:
        """A batch is in its model's queue (or waits for its model to load). An interactive one stops
        the batch-class batches that give way to it now, not when its first job arrived nor when it
        was admitted: the GPU works on until the interactive batch is claimed and queued behind them,
        then the batch-class one stops at its next step and the model's thread goes straight on to
        it (each round trip between the two left the GPU idle). When every pipeline slot is taken,
        the interactive batch cannot be admitted before a slot frees: they stop at once, and give
        their slots back (on_interactive)."""
        if batch.priority == "interactive":
            self.admitted_interactive()

    def ended(self, batch: Batch) -> None:
        if batch in self.inflight:
            self.inflight.remove(batch)

    def expected_s(self, model: str, size: int) -> float:
        return self.pipeline.timer.expected(model, size, self.times.seconds(model, size))

    def steps(self, batch: Batch) -> int:
        """The denoising steps of the batch's model."""
        return max(self.slot_for(batch).profile.model(batch.model).steps, 1)

    def on_interactive(self, delivery: Delivery) -> None:
        """An interactive job arrived: the batch-class batches ahead give way when the rule says so
        (engine.batch_class_yields, over classes.should_yield), once its batch is admitted
        (`admitted`); admission times it as if they had stopped now."""
        ahead = [batch for batch in self.inflight if not batch.yielded]
        if not any(batch.priority == "batch" for batch in ahead):
            return
        plan, now = self.service.plans.current, self.clock()
        size = min(max(self.intake.collectors.interactive.waiting, 1), plan.batch_for(self.tier))
        batch_s = self.expected_s(plan.model_for(self.tier), size)
        view = [InFlight(batch.priority, batch.ends_by) for batch in ahead]
        if not engine.batch_class_yields(self.service.settings.batch_yield, now, view, batch_s, deadline_of(delivery),
                                         self.intake.batch_first()):
            return
        self.pipeline.busy_until = engine.interactive_free_at(now, view)
        self.giving_way = [batch for batch in ahead if batch.priority == "batch"]
        if sum(batch.holds_slot for batch in self.inflight) >= PIPELINE_DEPTH:  # no slot for the interactive batch
            self.admitted_interactive()

    def admitted_interactive(self) -> None:
        """Stop the batch-class batches giving way (an interactive batch is queued on the model, or
        will be once their slots are free)."""
        for stopping in self.giving_way:
            if stopping in self.inflight and not stopping.yielded:
                self.stop(stopping)
        self.giving_way = []

    def stop(self, batch: Batch) -> None:
        """Pause the batch at its next step (Settings.batch_yield "pause", a model that can), or
        flag every job of it in its model's control block: it ends at its next step."""
        generator = self.slot_for(batch).generator
        batch.yielded = True
        batch.pausing = self.service.settings.batch_yield == "pause" and generator is not None and generator.can_pause
        self.give_slot(batch)  # it ends at its next step: the interactive batch is admitted behind it meanwhile
        if generator is None or not batch.items:
            return
        ids = [item.job_id for item in batch.items]
        progress = generator.progress(ids[0])
        batch.stopped_at_step = progress[0] if progress is not None else None
        if batch.pausing:
            generator.pause(ids)  # a batch not begun yet is held before it begins (Batch.begin)
        else:
            generator.cancel(ids)
        log.info("batch_class_yielding", jobs=len(ids), step=batch.stopped_at_step, pause=batch.pausing)

    async def after(self, batch: Batch, items: list[Claimed], results: list, generator: Generator,
                    hands: Handoff, jobs: RunningJobs) -> tuple[list[Claimed], list]:
        """After a stopped batch: held when the model paused it; else its jobs the model stopped
        for (not cancelled by their clients) are given back; the rest (cancelled ones, or all of
        them when the batch ended before the flag was read) go on as any batch's do."""
        generator.book.forget([item.job_id for item in batch.items])
        paused = [result for result in results if isinstance(result, GenerationPaused)]
        if paused and len(paused) == len(items):
            self.hold(batch, items, paused[0].step, paused[0].busy_s)
            return [], []
        stopped = [isinstance(result, GenerationCancelled) and item.job_id not in jobs.cancelled
                   for item, result in zip(items, results, strict=True)]
        given = [item for item, gone in zip(items, stopped, strict=True) if gone]
        if given:
            steps = self.steps(batch)
            lost_steps = 0 if batch.stopped_at_step is None and not batch.began else \
                min((batch.stopped_at_step or 0) + 1, steps)
            lost_s = self.expected_s(batch.model, len(batch.items)) * lost_steps / steps
            metrics.observe_batch_yield(self.tier.value, lost_s)
            metrics.observe_class_busy(self.tier.value, "batch", lost_s)
            log.info("batch_class_yielded", jobs=len(given), steps_lost=lost_steps, steps=steps,
                     lost_s=round(lost_s, 3))
            await give_back(hands, given, YIELD_REASON)
        kept = [(item, result) for item, result, gone in zip(items, results, stopped, strict=True) if not gone]
        return [item for item, _ in kept], [result for _, result in kept]

    def hold(self, batch: Batch, items: list[Claimed], step: int, busy_s: float | None = None) -> None:
        """A paused batch, held (claims and deliveries kept) until `resume`; the model's time on it
        (`busy_s`, measured on the model's thread and carried by GenerationPaused) is the batch
        class's busy time, none lost. None: it was paused before it began (Batch.begin), no step run."""
        steps = self.steps(batch)
        metrics.observe_batch_yield(self.tier.value, 0.0)
        metrics.observe_class_busy(self.tier.value, "batch", busy_s or 0.0)
        # holds_slot: its slot went back when it was stopped; once resumed it holds the one the feeder took for it
        self.paused.append(replace(batch, items=items, first_step=step, yielded=False, began=False, pausing=False,
                                   stopped_at_step=None, holds_slot=True))
        log.info("batch_class_paused", jobs=len(items), step=step, steps=steps)
        self.intake.collectors.wake()

    def resume(self, own_model: str) -> Batch | None:
        """The oldest paused batch, admitted again after the batches ahead, for the steps it has left
        (classes.resumed_s). Its model is loaded (its own, or the guest's beside it): the pipeline
        keeps `own_model` as the model loaded once it has run."""
        if not self.paused:
            return None
        batch = self.paused.pop(0)
        steps = self.steps(batch)
        left = classes.resumed_s(self.expected_s(batch.model, len(batch.items)), batch.first_step, steps)
        batch.ends_by = max(self.clock(), self.pipeline.busy_until) + left
        self.pipeline.commit(batch.ends_by, own_model)
        self.admitted(batch)
        log.info("batch_class_resumed", jobs=len(batch.items), step=batch.first_step, steps=steps)
        return batch

    async def release(self, hands_for: Callable[[Batch], Handoff]) -> None:
        """A stopping worker's paused batches: their jobs handed back to their batch queues."""
        while self.paused:
            batch = self.paused.pop(0)
            await give_back(hands_for(batch), batch.items, "its worker stopped while its batch was paused")


async def give_back(hands: Handoff, items: list[Claimed], reason: str) -> None:
    """Claimed batch-class jobs whose batch was stopped for interactive work: the claims go back
    (`routed`: the store lets a claim's owner hand it back, started or not; no result was stored, so
    nothing is stored twice), each job is published again to its tier's batch queue with its
    deadline unchanged, then its deliveries are acked. A fresh message, not a requeue: a requeue
    counts as a failed delivery (quorum queues, x-delivery-limit), and a job stopped a few times
    would be dead-lettered. A crash between the publish and the ack leaves two messages: the claim
    rules run the job once (shared/policies/steps.py). What cannot be handed back or published is requeued."""
    changes = [hand_back(item.job_id, hands.owner, escalated=item.task.escalated, reason=reason) for item in items]
    try:
        outcomes = await hands.service.store.apply_many(changes)
    except Exception as error:
        log.warning("give_back_failed", jobs=len(items), error=f"{type(error).__name__}: {error}")
        for item in items:
            await hands.settle(item, Disposition.requeue)
        return
    for item, outcome in zip(items, outcomes, strict=True):
        with bind_job(item.job_id):
            if outcome.applied:
                await republish(hands, item)
            elif outcome.before is not None and outcome.before.terminal:
                await hands.settle(item, Disposition.ack)  # cancelled meanwhile: nothing left to run
            else:
                await hands.settle(item, Disposition.requeue)


async def republish(hands: Handoff, item: Claimed) -> None:
    try:
        await hands.service.bus.publish(hands.service.bus.queues.batch(hands.tier), item.task, message_id=item.job_id)
    except Exception as error:
        log.warning("give_back_not_published", error=f"{type(error).__name__}: {error}")
        await hands.settle(item, Disposition.requeue)
        return
    await hands.settle(item, Disposition.ack)
