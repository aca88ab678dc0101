"""The router: validates each ingress job, records it, scores its prompt and sends the
top fraction r of prompts straight to the heavy tier, the rest to the light tier."""

from __future__ import annotations

import time

from shared import metrics
from shared.bus import Delivery
from shared.errors import Disposition, InvalidJob
from shared.logging import bind_job, get_logger
from shared.policies.router import default_router
from shared.schemas import Job, JobState, Task, Tier, job_id_of, parse_message
from shared.service import InFlight, Service, run
from shared.store import APPLIED, Change

log = get_logger(__name__)
INGRESS_PREFETCH = 64


class Router:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.scorer = default_router()
        self._threshold: tuple[float, float] = (-1.0, 0.0)  # (r, score threshold), recomputed when r changes

    async def handle(self, delivery: Delivery) -> None:
        try:
            job = parse_message(Job, delivery.body)
        except InvalidJob as error:
            job_id = job_id_of(delivery.body)
            await self.service.settle_failure(delivery, error, [job_id] if job_id else [])
            return
        with bind_job(job.job_id):
            try:
                await self.route(job, redelivered=delivery.delivery_count > 1)
                await delivery.settle(Disposition.ack)
            except Exception as error:
                await self.service.settle_failure(delivery, error, [job.job_id])

    def threshold(self, r: float) -> float:
        if self._threshold[0] != r:
            self._threshold = (r, self.scorer.threshold(r))
        return self._threshold[1]

    async def route(self, job: Job, redelivered: bool) -> None:
        store, settings = self.service.store, self.service.settings
        plan = self.service.plans.current
        deadline = job.effective_deadline(settings.slo_s)
        score = self.scorer.score(job.prompt)
        tier = Tier.heavy if score >= self.threshold(plan.r) else Tier.light
        expired = time.time() >= deadline
        if expired:
            state, outcome = JobState.expired, {"error": "408 Expired: deadline passed before routing"}
        else:
            state, outcome = JobState.routed, {"tier": tier.value, "router_score": score, "plan_version": plan.version}
        record = {"prompt": job.prompt, "submitted_at": job.submitted_at, "deadline": deadline,
                  "metadata": job.metadata, **outcome}
        # Recorded before publishing, so the worker's `generating` always comes after it.
        created = await store.apply(Change(job.job_id, state, record, create=True, passing=(JobState.queued,)))
        if created != APPLIED:
            if not await self.needs_routing(job.job_id, redelivered):
                log.info("duplicate_job_ignored")
                return
            await store.transition(job.job_id, state, **outcome)
        if expired:
            metrics.observe_unserved(JobState.expired)
        else:
            metrics.observe_routed(tier.value)
            task = Task(job=job, deadline=deadline, tier=tier, router_score=score, plan_version=plan.version)
            await self.service.bus.publish(self.service.bus.queues.tier(tier), task, message_id=job.job_id)

    async def needs_routing(self, job_id: str, redelivered: bool) -> bool:
        """An existing record still needs routing when an earlier router stopped before publishing:
        it is `queued`, or `routed` and this is a redelivery (publishing twice is harmless,
        completion is idempotent). Otherwise the job id was already served: a duplicate."""
        record = await self.service.store.get(job_id)
        if record is None:
            return False
        return record.state is JobState.queued or (redelivered and record.state is JobState.routed)


async def main(service: Service) -> None:
    router = Router(service)
    in_flight = InFlight()

    async def on_delivery(delivery: Delivery) -> None:
        with in_flight:
            await router.handle(delivery)

    consumer = await service.bus.consume(service.bus.queues.requests, on_delivery, prefetch=INGRESS_PREFETCH)
    metrics.mark_ready("router")
    await service.stopping.wait()
    await consumer.cancel()
    await in_flight.drain(service.settings.shutdown_grace_s)


if __name__ == "__main__":
    run("router", main)
