"""What a worker does with a job after a decision: claim it, store its result, hand it on (light
results to the judge), settle its deliveries, and carry out the too-late fallback's moves. Split
from services/worker.py (which runs the batches) to keep each module one concern and under the
house limit of 500 lines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared import metrics
from shared.batching import ClassCollectors
from shared.crashpoints import crash_point
from shared.errors import BackendFailed, Disposition, Expired, InvalidJob, Overloaded
from shared.intake import Claimed
from shared.logging import bind_job, get_logger
from shared.outcome import Applied
from shared.policies import engine, steps
from shared.policies.admission import Fallback
from shared.policies.engine import BatchTimes
from shared.policies.steps import Next
from shared.schemas import Job, JobState, Task, Tier
from shared.service import Service
from shared.store import Change, hand_back, serve_light

if TYPE_CHECKING:
    from services.worker import ModelSlot

log = get_logger(__name__)

Clock = Callable[[], float]


class Handoff:
    """Everything after a decision: claims, the store's results, the next hop, the settling of
    deliveries, and the too-late fallback's moves."""

    def __init__(self, service: Service, tier: Tier, owner: str, collector: ClassCollectors, model: ModelSlot,
                 times: BatchTimes, clock: Clock = time.time, claimed: dict[str, Claimed] | None = None,
                 guest: bool = False) -> None:
        self.service, self.tier, self.owner, self.collector, self.model = service, tier, owner, collector, model
        self.times, self.clock = times, clock
        # job id -> the item, from its claim until it is settled (shared by a worker's two handoffs)
        self.claimed: dict[str, Claimed] = {} if claimed is None else claimed
        # `tier` is the guest tier of a light worker that also runs heavy batch work (classes.guest_tier):
        # its jobs are claimed, stored and fall back as that tier's, and a held one waits in the guest collector
        self.guest = guest

    async def claim(self, items: list[Claimed], model: str) -> list[Claimed]:
        """Claim `generating` for the items in one round trip: those this worker is to generate."""
        # Step 0 of the model's steps: an escalated job's record forgets its light batch's last step.
        started = {"tier": self.tier.value, "model": model, "step": 0, "steps": self.model.profile.model(model).steps}
        changes = [Change(item.job_id, JobState.generating, started, owner=self.owner) for item in items]
        try:
            outcomes = await self.service.store.apply_many(changes)
        except Exception as error:
            await self.settle_all(items, error)
            return []
        crash_point(f"{self.tier.value}.after_claim")
        claimed = []
        for item, outcome in zip(items, outcomes, strict=True):
            step = steps.after_claim(self.tier, outcome)
            if outcome.before is JobState.cancelled:  # cancelled while it waited: acked, not worked
                metrics.observe_cancelled_delivery(self.tier.value, "refused")
            if step is Next.work:
                self.claimed[item.job_id] = item
                claimed.append(item)
            else:
                await self.follow(item, step)
        return claimed

    async def follow(self, item: Claimed, step: Next, model: str | None = None) -> None:
        """Carry out a step decision for an item this worker does not generate (now); `model`
        made the image this worker just stored (None: it stored none, the delivery is a duplicate
        or the job went on without it)."""
        with bind_job(item.job_id):
            if step is Next.wait:
                # A live worker is generating this job: look again later, holding the delivery
                # (acking it would lose the job if that worker then died).
                log.info("claim_held_elsewhere", recheck_s=steps.RECHECK_S)
                collector = self.collector.of(item.task.job.priority, guest=self.guest)
                for delivery in item.deliveries:
                    asyncio.get_running_loop().call_later(steps.RECHECK_S, collector.put, delivery)
            elif step is Next.no_record:
                await self.settle_all([item], InvalidJob("no job record (expired from the store?)"))
            elif step is Next.hand_on:
                await self.hand_on(item, model)
            else:
                if model is None:  # a refused claim, or a result someone else stored first
                    log.info("duplicate_delivery_dropped")
                await self.settle(item, Disposition.ack)

    async def settle(self, item: Claimed, disposition: Disposition) -> None:
        self.claimed.pop(item.job_id, None)
        await item.settle(disposition)

    async def settle_all(self, items: list[Claimed], error: BaseException) -> None:
        for item in items:
            self.claimed.pop(item.job_id, None)
            await item.fail(self.service, error)

    async def hand_back(self, items: list[Claimed]) -> None:
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

    async def too_late(self, item: Claimed) -> None:
        """A job this GPU cannot finish by its deadline takes the way out engine.fallback gives it:
        its light image, the light tier, or shed (expired), which saves the GPU's time for jobs
        that can still make theirs. A move that cannot be made (no light image, a job no longer
        `routed`) sheds it too."""
        task = item.task
        with bind_job(item.job_id):
            plan, now = self.service.plans.current, self.clock()
            fallback = engine.fallback(plan, self.tier, task.escalated, now, task.deadline, self.times,
                                       task.job.quality)
            try:
                if fallback is Fallback.serve_light and await self.serve_light_image(
                        task, "the heavy model could not finish in time: served the light image"):
                    await self.settle(item, Disposition.ack)
                    return
                if fallback is Fallback.to_light and await self.reroute_to_light(task):
                    await self.settle(item, Disposition.ack)
                    return
            except Exception as error:
                await self.settle_all([item], error)
                return
            reason = "deadline passed before generation" if now >= task.deadline else "would finish after its deadline"
            await self.settle_all([item], Expired(reason))

    async def reroute_to_light(self, task: Task) -> bool:
        """Record the job as routed to the light tier, then hand it there. Only a job still
        `routed` can move (the store's re-route); one a heavy worker has claimed (it died mid-batch,
        so this is a redelivery) cannot go back a step, and a light worker's claim would be refused
        as stale, leaving the job unfinished: it is shed instead (the caller expires it).

        A batch-class job goes too, to the light tier's batch queue. Batch asked for the best quality
        its deadline allows, not for the heavy model at any price: the planner sends batch work to
        the heavy tier where its leftover covers the backlog (classes.place_batch), and when the
        heavy tier cannot end a job in time after all, the light model's image by the deadline is
        the better outcome than none (an expired batch job is one its owner must submit again). A
        `high` job (heavy only) is still shed (engine.fallback)."""
        moved = await self.service.store.apply(Change(task.job.job_id, JobState.routed, {"tier": Tier.light.value}))
        if not moved.applied:
            log.info("not_rerouted", state=moved.before.value if moved.before else None)
            return False
        light_task = task.model_copy(update={"tier": Tier.light})
        queues = self.service.bus.queues
        queue = queues.batch(Tier.light) if task.job.priority == "batch" else queues.tier(Tier.light)
        await self.service.bus.publish(queue, light_task, message_id=task.job.job_id)
        log.info("rerouted_to_light", reason="the heavy tier cannot finish it in time")
        return True

    async def serve_light_image(self, task: Task, reason: str) -> bool:
        """Finish the job with the light image it already has (stored once: the light key becomes
        the final one). False when there is none."""
        outcome = await self.service.store.apply(serve_light(task.job.job_id, reason))
        if outcome.applied:
            metrics.observe_done(Tier.light.value, task.job.submitted_at, task.deadline, priority=task.job.priority)
        return outcome.result is not Applied.no_image

    async def finish(self, items: list[Claimed], results: list, model_name: str) -> None:
        """Encode, store (one round trip for the batch), pass light results to the judge, ack."""
        pngs = await self.model.encode(results, [item.task.job for item in items])
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
        for item, outcome in zip(generated, outcomes, strict=True):
            if outcome.applied and final_here(self.tier, item.task.job):
                metrics.observe_done(self.tier.value, item.task.job.submitted_at, item.task.deadline,
                                     priority=item.task.job.priority)
        await asyncio.gather(*(self.follow(item, steps.after_store(result_tier(self.tier, item.task.job), outcome),
                                           model_name if outcome.applied else None)
                               for item, outcome in zip(generated, outcomes, strict=True)))

    def result_change(self, task: Task, png: bytes, model_name: str) -> Change:
        fields = {"tier": self.tier.value, "model": model_name}
        if final_here(self.tier, task.job):
            return Change(task.job.job_id, JobState.done, {**fields, "escalated": task.escalated}, image=png)
        return Change(task.job.job_id, JobState.judging, fields, image=png, image_variant="light")

    async def hand_on(self, item: Claimed, model: str | None) -> None:
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

    async def light_model_of(self, item: Claimed) -> str:
        """The model that made the stored light image (the record says; this worker's model when
        the record does not)."""
        record = await self.service.store.get(item.job_id)
        return (record.model if record is not None and record.model else None) or self.model.name


def final_here(tier: Tier, job: Job) -> bool:
    """Whether this tier's image is the job's result: the heavy tier's always; the light tier's for
    a batch-class job, which the judge does not see (the planner chose its tier for the backlog's
    deadlines, and an escalation would spend heavy time that interactive work or the backlog needs:
    docs/classes.md). An interactive light image goes to the judge."""
    return tier is Tier.heavy or job.priority == "batch"


def result_tier(tier: Tier, job: Job) -> Tier:
    """The tier whose step rules follow a stored result (steps.after_store): a final light image
    ends the job as a heavy one does (acked, no judge task)."""
    return Tier.heavy if final_here(tier, job) else tier
