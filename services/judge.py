"""The quality judge: scores each light image and escalates the lowest fraction d of them
to the heavy tier (d from the plan, turned into a score threshold by calibration);
the rest are done with the light image."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from shared import metrics
from shared.backends import decode_png, make_scorer
from shared.backends.base import ScoreInput
from shared.batching import BatchCollector
from shared.bus import Delivery
from shared.errors import Disposition, InvalidJob
from shared.logging import bind_job, get_logger
from shared.policies.judge import JudgeCalibration, calibration_for
from shared.profiles import load_profile
from shared.schemas import JobState, Task, Tier, job_id_of, parse_message
from shared.service import Service, run
from shared.store import APPLIED, MISSING, Change

log = get_logger(__name__)

JUDGE_BATCH = 8
JUDGE_PREFETCH = 3 * JUDGE_BATCH

Scored = tuple[Delivery, Task, bytes]


class Judge:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.profile = load_profile(self.settings.profile)
        self.scorer = make_scorer(self.settings.judge_backend, device=self.settings.device,
                                  clip_arch=self.settings.clip_arch, head_path=self.settings.judge_head_path,
                                  clip_checkpoint=self.settings.clip_checkpoint)
        self.calibrations: dict[str, JudgeCalibration] = {}
        self.collector = BatchCollector()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="judge")

    def calibration(self, model_name: str) -> JudgeCalibration:
        if model_name not in self.calibrations:
            model = self.profile.model(model_name)
            # The reference scores are on the paper judge's scale: no seed for a judge on another.
            seeded = self.settings.judge_backend != "clipscore"
            self.calibrations[model_name] = calibration_for(model) if seeded else JudgeCalibration(None)
        return self.calibrations[model_name]

    async def on_delivery(self, delivery: Delivery) -> None:
        self.collector.put(delivery)

    async def run(self) -> None:
        consumer = await self.service.bus.consume(self.service.bus.queues.judge, self.on_delivery,
                                                  prefetch=JUDGE_PREFETCH)
        metrics.mark_ready("judge")
        log.info("judge_ready", backend=self.settings.judge_backend)
        while not self.service.stopping.is_set():
            batch = await self.collector.take(JUDGE_BATCH, self.settings.batch_wait_ms / 1000)
            if batch:
                await self.judge_batch(batch)
        await consumer.cancel()
        for delivery in self.collector.drain_nowait():
            await delivery.settle(Disposition.requeue)
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    async def judge_batch(self, batch: list[Delivery]) -> None:
        items = await self.load(batch)
        if not items:
            return
        inputs = [
            ScoreInput(task.job.job_id, task.job.prompt, decode_png(png), self.profile.model(task.model))
            for _, task, png in items
        ]
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self.model_thread, self.scorer.score, inputs)
        except Exception as error:
            await self.settle_all(items, error)
            return
        await self.decide(items, scores)

    async def load(self, batch: list[Delivery]) -> list[Scored]:
        """Parse a batch and fetch its light images in one round trip."""
        parsed = []
        for delivery in batch:
            try:
                task = parse_message(Task, delivery.body)
                if task.model is None:
                    raise InvalidJob("judge task names no model")
                self.profile.model(task.model)
                parsed.append((delivery, task))
            except (InvalidJob, KeyError) as error:
                job_id = job_id_of(delivery.body)
                error = error if isinstance(error, InvalidJob) else InvalidJob(str(error))
                await self.service.settle_failure(delivery, error, [job_id] if job_id else [])
        try:
            pngs = await self.service.store.get_images([task.job.job_id for _, task in parsed], variant="light")
        except Exception as error:
            await self.settle_all([(delivery, task, b"") for delivery, task in parsed], error)
            return []
        items = []
        for (delivery, task), png in zip(parsed, pngs):
            if png is None:
                await self.service.settle_failure(delivery, InvalidJob("the light image is gone from the store"),
                                                  [task.job.job_id])
            else:
                items.append((delivery, task, png))
        return items

    def heavy_batch_s(self, plan) -> float:
        """The profiled time of a heavy batch (0 when the profile has no latencies): an escalation
        that cannot finish by the deadline is not made; the light image is served instead."""
        heavy = self.profile.model(plan.heavy_model)
        if not heavy.latency_ms:
            return 0.0
        return heavy.batch_latency_s(plan.heavy_batch) * self.settings.latency_scale

    def verdict(self, task: Task, png: bytes, score: float) -> Change:
        """Escalate the lowest fraction d (when there is still time for the heavy model), else done."""
        plan = self.service.plans.current
        calibration = self.calibration(task.model)
        escalate = calibration.escalate(score, plan.d)
        calibration.observe(score)
        if escalate and time.time() + self.heavy_batch_s(plan) < task.deadline:
            return Change(task.job.job_id, JobState.escalated, {"judge_score": score, "plan_version": plan.version})
        fields = {"judge_score": score, "tier": Tier.light.value, "model": task.model}
        return Change(task.job.job_id, JobState.done, fields, image=png,
                      detail="too late to escalate" if escalate else "")

    async def decide(self, items: list[Scored], scores: list[float]) -> None:
        changes = [self.verdict(task, png, score) for (_, task, png), score in zip(items, scores)]
        try:
            outcomes = await self.service.store.apply_many(changes)
        except Exception as error:
            await self.settle_all(items, error)
            return
        for (_, task, _), change, outcome in zip(items, changes, outcomes):
            if outcome != APPLIED:
                continue
            if change.state is JobState.escalated:
                metrics.observe_verdict(task.model, "escalated")
            else:
                metrics.observe_verdict(task.model, "too_late" if change.detail else "accepted")
                metrics.observe_done(Tier.light.value, task.job.submitted_at, task.deadline)
        await asyncio.gather(*(self.hand_on(item, change, outcome)
                               for item, change, outcome in zip(items, changes, outcomes)))

    async def hand_on(self, item: Scored, change: Change, outcome: int) -> None:
        """Escalated jobs go to the heavy tier; then the delivery is acked."""
        delivery, task, _ = item
        with bind_job(task.job.job_id):
            try:
                if outcome == MISSING:
                    raise InvalidJob("no job record (expired from the store?)")
                if change.state is JobState.escalated and outcome == APPLIED:
                    heavy_task = task.model_copy(update={"tier": Tier.heavy, "escalated": True, "model": None})
                    await self.service.bus.publish(self.service.bus.queues.tier(Tier.heavy), heavy_task,
                                                   message_id=task.job.job_id)
                await delivery.settle(Disposition.ack)
            except Exception as error:
                await self.service.settle_failure(delivery, error, [task.job.job_id])

    async def settle_all(self, items: list[Scored], error: BaseException) -> None:
        for delivery, task, _ in items:
            with bind_job(task.job.job_id):
                await self.service.settle_failure(delivery, error, [task.job.job_id])


async def main(service: Service) -> None:
    await Judge(service).run()


if __name__ == "__main__":
    run("judge", main)
