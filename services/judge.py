"""The quality judge: scores each light image and escalates the lowest fraction d of them
to the heavy tier (d from the plan, turned into a score threshold by calibration);
the rest are done with the light image."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from shared import metrics
from shared.backends import decode_image, make_scorer
from shared.backends.base import ScoreInput
from shared.batching import BatchCollector
from shared.bus import Delivery
from shared.crashpoints import crash_point
from shared.errors import Disposition, InvalidJob, Overloaded
from shared.intake import Claimed, intake, parse_task
from shared.logging import bind_job, get_logger
from shared.policies import engine, steps
from shared.policies.admission import HeavyRoom
from shared.policies.engine import BatchTimes, Verdict
from shared.policies.judge import JudgeCalibration, calibration_for
from shared.policies.steps import Next
from shared.profiles import load_profile
from shared.schemas import JobState, Task, Tier
from shared.service import Service, run
from shared.store import Change, serve_light

log = get_logger(__name__)

JUDGE_BATCH = 8
JUDGE_PREFETCH = 3 * JUDGE_BATCH


def model_of(item: Claimed) -> str:
    """The light model that made a judge task's image (the intake refuses a task without one)."""
    assert item.task.model is not None
    return item.task.model


class Judge:
    def __init__(self, service: Service, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.settings = service.settings
        self.clock = clock  # the verdict's "now" (the replay test gives its own)
        self.profile = load_profile(self.settings.profile)
        self.times = BatchTimes(self.profile, self.settings.latency_scale)
        self.scorer = make_scorer(self.settings.judge_backend, device=self.settings.device,
                                  clip_arch=self.settings.clip_arch, head_path=self.settings.judge_head_path,
                                  clip_checkpoint=self.settings.clip_checkpoint)
        self.calibrations: dict[str, JudgeCalibration] = {}
        self.escalations = HeavyRoom()  # its escalations in the heavy tier (engine.verdict)
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
        """Score the light images and decide. A quality=low job is not scored: it is never escalated
        (shared/policies/quality.py), so its score could change nothing, and it stays out of the
        calibration, whose percentile d is over the cascade's jobs. It still comes through here, not
        straight from the light worker to `done`: one path for every light image keeps the steps'
        crash rules (shared/policies/steps.py) as they are, at the cost of a hop and no decoding."""
        loaded = await self.load(batch)
        if not loaded:
            return
        unjudged = [item for item, _ in loaded if item.task.job.quality == "low"]
        judged = [(item, png) for item, png in loaded if item.task.job.quality != "low"]
        scores: list[float] = []
        if judged:
            try:
                scores = await asyncio.get_running_loop().run_in_executor(self.model_thread, self.score, judged)
            except Exception as error:
                await self.settle_all([item for item, _ in judged], error)
                judged = []
        await self.decide([*unjudged, *(item for item, _ in judged)], [None] * len(unjudged) + list(scores))

    def score(self, loaded: list[tuple[Claimed, bytes]]) -> list[float]:
        """On the judge's thread: decode each light image (in its job's format) and score them."""
        inputs = [ScoreInput(item.job_id, item.task.job.prompt, decode_image(image), self.profile.model(model_of(item)))
                  for item, image in loaded]
        return list(self.scorer.score(inputs))

    def parse(self, delivery: Delivery) -> Task:
        """A judge task names the light model that made its image, one of the profile's."""
        task = parse_task(delivery)
        if task.model is None:
            raise InvalidJob("judge task names no model")
        try:
            self.profile.model(task.model)
        except KeyError as error:
            raise InvalidJob(str(error)) from None
        return task

    async def load(self, batch: list[Delivery]) -> list[tuple[Claimed, bytes]]:
        """Take a batch in (shared/intake.py), read each job's state and fetch the light images of
        those still to be judged, in two round trips. A job judged already is not judged again: its
        stored verdict is followed (shared/policies/steps.py)."""
        parsed = await intake(self.service, batch, self.parse)
        try:
            states = await self.service.store.states([item.job_id for item in parsed])
        except Exception as error:
            await self.settle_all(parsed, error)
            return []
        to_judge = []
        for item, state in zip(parsed, states, strict=True):
            step = steps.before_judging(state)
            if step is Next.work:
                to_judge.append(item)
            else:
                await self.follow(item, step)
        try:
            pngs = await self.service.store.get_images([item.job_id for item in to_judge], variant="light")
        except Exception as error:
            await self.settle_all(to_judge, error)
            return []
        loaded = []
        for item, png in zip(to_judge, pngs, strict=True):
            if png is None:
                await self.settle_all([item], InvalidJob("the light image is gone from the store"))
            else:
                loaded.append((item, png))
        return loaded

    def verdict(self, item: Claimed, score: float | None) -> Change:
        """The record change for the engine's verdict (shared/policies/engine.py: verdict): escalated,
        or done with the light image (renamed to the final key: stored once), noting when it was
        low enough to escalate but too late for the heavy model. No score: a quality=low job, done.
        The plan's d applies to the cascade's jobs (quality.for_auto_jobs, in engine.verdict)."""
        plan = self.service.plans.current
        model = model_of(item)
        if score is None:
            return Change(item.job_id, JobState.done, {"tier": Tier.light.value, "model": model}, promote_light=True,
                          detail="quality=low: the light image, not judged")
        decided = engine.verdict(self.calibration(model), score, plan, self.clock(), item.task.deadline, self.times,
                                 self.escalations, item.task.held_for)
        if decided is Verdict.escalate:
            return Change(item.job_id, JobState.escalated, {"judge_score": score, "plan_version": plan.version})
        fields = {"judge_score": score, "tier": Tier.light.value, "model": model}
        return Change(item.job_id, JobState.done, fields, promote_light=True,
                      detail="too late to escalate" if decided is Verdict.too_late else "")

    async def decide(self, items: list[Claimed], scores: list[float | None]) -> None:
        changes = [self.verdict(item, score) for item, score in zip(items, scores, strict=True)]
        try:
            outcomes = await self.service.store.apply_many(changes)
        except Exception as error:
            await self.settle_all(items, error)
            return
        crash_point("judge.after_verdict")
        for item, change, outcome in zip(items, changes, outcomes, strict=True):
            if not outcome.applied:
                continue
            if change.state is JobState.escalated:
                metrics.observe_verdict(model_of(item), "escalated")
            else:
                late = change.detail.startswith("too late")
                metrics.observe_verdict(model_of(item), "too_late" if late else "accepted")
                metrics.observe_done(Tier.light.value, item.task.job.submitted_at, item.task.deadline)
        await asyncio.gather(*(self.follow(item, steps.after_verdict(outcome, change.state is JobState.escalated))
                               for item, change, outcome in zip(items, changes, outcomes, strict=True)))

    async def follow(self, item: Claimed, step: Next) -> None:
        with bind_job(item.job_id):
            if step is Next.no_record:
                await self.settle_all([item], InvalidJob("no job record (expired from the store?)"))
            elif step is Next.hand_on:
                await self.escalate(item)
            else:
                await self.settle(item, Disposition.ack)

    async def escalate(self, item: Claimed) -> None:
        """The heavy tier gets the escalated job; then the delivery is acked. When the heavy queue
        refuses it (full), the job is served the light image it already has."""
        try:
            heavy_task = item.task.model_copy(update={"tier": Tier.heavy, "escalated": True, "model": None})
            try:
                await self.service.bus.publish(self.service.bus.queues.tier(Tier.heavy), heavy_task,
                                               message_id=item.job_id)
            except Overloaded:
                outcome = await self.service.store.apply(
                    serve_light(item.job_id, "the heavy queue is full: served the light image"))
                if outcome.applied:
                    metrics.observe_done(Tier.light.value, item.task.job.submitted_at, item.task.deadline)
            crash_point("judge.after_publish")
            await self.settle(item, Disposition.ack)
        except Exception as error:
            await self.settle_all([item], error)

    @staticmethod
    async def settle(item: Claimed, disposition: Disposition) -> None:
        await item.settle(disposition)

    async def settle_all(self, items: list[Claimed], error: BaseException) -> None:
        for item in items:
            await item.fail(self.service, error)


async def main(service: Service) -> None:
    await Judge(service).run()


if __name__ == "__main__":
    run("judge", main)
