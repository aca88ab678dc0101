"""The router: validates each ingress job, records it, scores its prompt and sends the
top fraction r of prompts straight to the heavy tier, the rest to the light tier. A batch-class job
(Job.priority "batch") is not scored: it goes to the batch queue of the tier the plan's batch
placement draws for it (shared/policies/class_engine.py: batch_route), and the judge never sees it.

HADIS_ROUTER picks the score: "rule" (the paper's features · weights, microseconds) or
"learned" (a MiniLM prompt embedding and a per-light-model classifier, which predicts
whether the judge would escalate the plan's light model's image). The learned score
costs ~20 ms a prompt alone on a CPU and ~3 ms in a batch, so prompts are scored in
small batches on one thread, never on the event loop.

Anybody allowed to publish to the ingress can write any tenant and any job id into a body, so
the router believes neither on the body's word (docs/security.md, "AMQP door"): the tenant is
the one the sending broker user may act for (Delivery.tenant_for), and a body naming a job that
is already recorded routes it only when it is that very job (shared/policies/steps.py: recorded_job)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Protocol

import numpy as np

from shared import metrics
from shared.bus import Delivery
from shared.crashpoints import crash_point
from shared.errors import Disposition, InvalidJob
from shared.intake import parse_or_dead_letter
from shared.logging import bind_job, get_logger
from shared.policies import class_engine, engine, steps
from shared.policies import quality as quality_rules
from shared.policies.admission import ArrivalPace, HeavyRoom
from shared.policies.engine import BatchTimes
from shared.policies.learned_router import LearnedRouter
from shared.policies.router import default_router
from shared.profiles import load_profile
from shared.schemas import Job, JobState, Plan, Task, Tier, parse_message, valid_tenant
from shared.service import InFlight, Service, run
from shared.store import Change, Upsert, Upserted

log = get_logger(__name__)
INGRESS_PREFETCH = 64
# The batch ingress's: a router handles at most this many batch jobs at once, so that a bulk of them
# takes a quarter of the router's concurrency, never all of it, while interactive jobs arrive.
BATCH_INGRESS_PREFETCH = 16
SCORE_BATCH = 32

class PromptRouter(Protocol):
    inline: bool  # cheap enough to score on the event loop

    def score_many(self, prompts: list[str]) -> Sequence[float] | np.ndarray: ...
    def threshold(self, r: float) -> float: ...


class RuleScores:
    """The paper's router with the batch surface of the learned one."""

    inline = True

    def __init__(self) -> None:
        self.router = default_router()

    def score_many(self, prompts: list[str]) -> list[float]:
        return [self.router.score(prompt) for prompt in prompts]

    def threshold(self, r: float) -> float:
        return self.router.threshold(r)


def make_prompt_router(kind: str, light_model_name: str, profile_name: str) -> PromptRouter:
    if kind == "rule":
        return RuleScores()
    if kind == "learned":
        # The embedding (torch) is loaded only here: the rule router starts without it.
        from shared.backends.text_embedding import embed_prompts

        return LearnedRouter.for_model(load_profile(profile_name).model(light_model_name), embed_prompts)
    raise ValueError(f"unknown router {kind!r}; known: rule, learned")


class BatchedScorer:
    """Scores the prompts that arrive together in one call on the scoring thread."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="router-score")
        self.pending: list[tuple[PromptRouter, str, asyncio.Future[float]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def score(self, router: PromptRouter, prompt: str) -> float:
        if router.inline:
            return router.score_many([prompt])[0]
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending.append((router, prompt, future))
        if self.flushing is None:
            self.flushing = asyncio.get_running_loop().create_task(self.flush())
        return await future

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[:SCORE_BATCH], self.pending[SCORE_BATCH:]
                groups: dict[int, list[tuple[PromptRouter, str, asyncio.Future[float]]]] = {}
                for item in batch:
                    groups.setdefault(id(item[0]), []).append(item)
                for items in groups.values():
                    router = items[0][0]
                    try:
                        scores = await loop.run_in_executor(self.thread, router.score_many, [p for _, p, _ in items])
                    except Exception as error:
                        for _, _, future in items:
                            if not future.done():  # a cancelled caller (shutdown) is not waiting
                                future.set_exception(error)
                        continue
                    for (_, _, future), score in zip(items, scores, strict=True):
                        if not future.done():
                            future.set_result(float(score))
        finally:
            self.flushing = None

    def close(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)


class Decision(NamedTuple):
    """The router's decision on one job (Router.decide)."""

    tier: Tier
    score: float | None = None  # the prompt's score; None for a job whose quality or class forces its tier
    refusal: str | None = None  # why a quality=high job is refused
    held_for: str | None = None  # the burst guard sent it light (engine.Route.held_for): the judge escalates more


class Router:
    def __init__(self, service: Service, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.routers: dict[str, PromptRouter] = {}  # by the plan's light model
        self.thresholds: dict[tuple[str, float], float] = {}  # (light model, r) -> score threshold
        self.scorer = BatchedScorer()
        self.room = HeavyRoom()  # this router's backlog in the heavy tier (shared/policies/admission.py)
        self.light_room = HeavyRoom()  # what the router sent light in a burst (engine.route)
        self.pace = ArrivalPace()  # this router's interactive arrivals, held against the plan's burst_qps
        self.held_under: int | None = None  # the plan version under which a burst last held the routing
        self.times = BatchTimes(load_profile(service.settings.profile), service.settings.latency_scale)
        self.clock = clock  # the routing decision's "now" (the replay test gives its own)

    def router_for(self, light_model: str) -> PromptRouter:
        if light_model not in self.routers:
            settings = self.service.settings
            self.routers[light_model] = make_prompt_router(settings.router, light_model, settings.profile)
        return self.routers[light_model]

    async def warm_up(self) -> None:
        """Load the scorer of the current plan before consuming (the embedding model takes seconds)."""
        router = self.router_for(self.service.plans.current.light_model)
        await self.scorer.score(router, "warm up")

    async def handle(self, delivery: Delivery) -> None:
        job = await parse_or_dead_letter(self.service, delivery, parse_job)
        if job is None:
            return
        with bind_job(job.job_id):
            try:
                await self.route(job, redelivered=delivery.delivery_count > 1)
                crash_point("router.after_publish")
                await delivery.settle(Disposition.ack)
            except Exception as error:
                await self.service.settle_failure(delivery, error, [job.job_id])

    def threshold(self, light_model: str, r: float) -> float:
        key = (light_model, r)
        if key not in self.thresholds:
            self.thresholds[key] = self.router_for(light_model).threshold(r)
        return self.thresholds[key]

    async def decide(self, job: Job, plan: Plan, deadline: float) -> Decision:
        """The tier, the prompt's score (None for a job whose quality forces its tier: not scored), and
        why a quality=high job is refused (None when it is not): shared/policies/engine.py's
        forced_route and route, which the simulator calls too. The score's threshold is the plan's r
        for the cascade's own jobs (quality.for_auto_jobs: the forced jobs fill part of r). A batch
        job is not scored: its tier is the plan's batch placement's (class_engine.batch_route)."""
        if job.priority == "batch":
            return Decision(class_engine.batch_route(job.job_id, job.quality, plan))
        now = self.clock()
        arrived = self.pace.arrived(now)
        forced = engine.forced_route(job.quality, plan, self.room, now, deadline, self.times)
        if isinstance(forced, str):
            return Decision(Tier.heavy, refusal=forced)
        if forced is not None:
            return Decision(forced.tier)
        score = await self.scorer.score(self.router_for(plan.light_model), job.prompt)
        threshold = self.threshold(plan.light_model, quality_rules.for_auto_jobs(plan).r)
        routed = engine.route(score, threshold, plan, self.room, now, deadline, self.times, arrived, self.light_room)
        if routed.heavy_full:
            metrics.observe_heavy_full()
        if routed.burst:
            metrics.observe_burst_held()
            if self.held_under != plan.version:  # once per plan: a burst holds hundreds of jobs
                self.held_under = plan.version
                log.info("burst_routing_held", plan_version=plan.version, burst_qps=plan.burst_qps,
                         arrived_last_second=arrived)
        return Decision(routed.tier, score, held_for=routed.held_for)

    async def route(self, job: Job, redelivered: bool) -> None:
        settings = self.service.settings
        plan = self.service.plans.current
        deadline = job.effective_deadline(settings.slo_s, settings.batch_slo_s)
        decision = await self.decide(job, plan, deadline)
        tier, score, refusal = decision.tier, decision.score, decision.refusal
        expired = self.clock() >= deadline
        outcome: dict[str, Any]
        if expired:
            state, outcome = JobState.expired, {"error": "408 Expired: deadline passed before routing"}
        elif refusal is not None:
            state, outcome = JobState.failed, {"error": refusal}
        else:
            scored = {} if score is None else {"router_score": score}
            state, outcome = JobState.routed, {"tier": tier.value, **scored, "plan_version": plan.version}
        record = {**job.record_fields(deadline), **outcome}
        # Recorded before publishing, so the worker's `generating` always comes after it.
        stored = await self.record(job, Change(job.job_id, state, record, passing=(JobState.queued,),
                                               only_from=steps.rerouting_states(redelivered)))
        if stored is None:
            return
        if expired and stored.written:
            metrics.observe_unserved(JobState.expired, priority=job.priority)  # a violation like a shed job
        if quality_rules.forced_tier(job.quality) is not None and stored.written and job.priority != "batch":
            await self.service.store.count_forced(job.quality)  # the controller's quality mix
        if refusal is not None:
            if stored.written:
                metrics.observe_unserved(JobState.failed, Tier.heavy.value, job.priority)
            log.info("high_quality_refused", reason=refusal)
            return
        if stored.record is not None:
            # The routing decision was stored once: a redelivery publishes the same one again.
            tier = stored.record.tier or tier
            score = stored.record.router_score if stored.record.router_score is not None else score
        crash_point("router.after_record")
        if not expired:
            task = Task(job=job, deadline=deadline, tier=tier, router_score=score, plan_version=plan.version,
                        held_for=decision.held_for if tier is Tier.light else None)
            queues = self.service.bus.queues
            queue = queues.batch(tier) if job.priority == "batch" else queues.tier(tier)
            await self.service.bus.publish(queue, task, message_id=job.job_id)

    async def record(self, job: Job, change: Change) -> Upserted | None:
        """Record the routing in one round trip, whoever wrote the record first (the api writes it
        `queued`): Store.create_or_advance creates it, or moves on this job's record when
        steps.rerouting allows (change.only_from). None when this delivery is not to route the job:
        a duplicate, or a body that names a recorded job's id without being that job (acked: it must
        not change the job). The store checks the body's fields byte for byte (steps.same_job_fields);
        when they differ, steps.recorded_job decides on the record it sent back, and the same job
        written otherwise (a float, the metadata's key order) is moved on by a second call."""
        store = self.service.store
        stored = await store.create_or_advance(change, steps.same_job_fields(job))
        if stored.result is Upsert.differs and stored.record is not None:
            if not steps.recorded_job(stored.record, job, self.service.settings.slo_s):
                metrics.observe_distrusted("job_id_taken")
                log.warning("job_id_taken", state=stored.record.state.value, tenant=job.tenant,
                            recorded_tenant=stored.record.tenant)
                return None
            stored = await store.create_or_advance(change)
        if stored.result is Upsert.refused:
            log.info("duplicate_job_ignored", state=stored.before.value if stored.before else None)
            return None
        return stored


def parse_job(delivery: Delivery) -> Job:
    """An ingress message: a Job, for the tenant its sender may act for."""
    return as_sent_by(parse_message(Job, delivery.body), delivery)


def as_sent_by(job: Job, delivery: Delivery) -> Job:
    """The job with the tenant its sender may act for (Delivery.tenant_for), whatever its body says:
    a producer's broker user names its tenant; only the services' own user is believed."""
    tenant = delivery.tenant_for(job.tenant)
    if tenant is not None and not valid_tenant(tenant):
        raise InvalidJob(f"the broker user {tenant!r} that sent the job is not a tenant name (lower-case "
                         "letters, digits, _ and -, 1-64): see docs/security.md, AMQP door")
    if tenant == job.tenant:
        return job
    if job.tenant is not None:
        metrics.observe_distrusted("tenant")
        log.warning("tenant_replaced", job_id=job.job_id, claimed=job.tenant, tenant=tenant, user_id=delivery.user_id)
    return job.model_copy(update={"tenant": tenant})


async def main(service: Service) -> None:
    router = Router(service)
    await router.warm_up()
    log.info("router_ready", router=service.settings.router)
    in_flight = InFlight()

    async def on_delivery(delivery: Delivery) -> None:
        with in_flight:
            await router.handle(delivery)

    # Two ingress queues, one consumer each: a bulk of batch jobs never stands in front of interactive
    # ones (5,000 batch jobs took 19-27 s to route; interactive jobs behind them expired).
    consumers = [await service.bus.consume(queue, on_delivery, prefetch=prefetch)
                 for queue, prefetch in ((service.bus.queues.requests, INGRESS_PREFETCH),
                                         (service.bus.queues.requests_batch, BATCH_INGRESS_PREFETCH))]
    metrics.mark_ready("router")
    await service.stopping.wait()
    metrics.mark_ready("router", False)
    for consumer in consumers:
        await consumer.cancel()
    await in_flight.drain(service.settings.shutdown_grace_s)
    router.scorer.close()


if __name__ == "__main__":
    run("router", main)
