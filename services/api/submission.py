"""New jobs into the ingress queue: admitted, published with the broker's confirm, recorded
`queued`. A request answered 503 part way leaves nothing running (withdraw), so the client's retry
is the only copy of its jobs."""

from __future__ import annotations

import asyncio

from services.api.keys import Caller
from services.api.state import Api
from shared import metrics
from shared.errors import HadisError, Overloaded
from shared.images_api import ApiError
from shared.logging import get_logger
from shared.schemas import Job, JobState
from shared.settings import Settings
from shared.store import Change

log = get_logger(__name__)

CANCELLABLE = (JobState.queued, JobState.routed)
WITHDRAWN = "the request was answered 503 before every image was queued; the client retries it"


async def accept(api: Api, caller: Caller, jobs: list[Job]) -> None:
    """Admit, publish with confirms, then record `queued` (the router records it too, whichever
    comes first): after this returns every job is durable in the broker."""
    jobs = await with_default_webhook(api, caller, jobs)
    await api.admission.admit(caller, jobs)
    bus = api.service.bus
    results = await asyncio.gather(*(bus.publish(bus.queues.ingress_for(job.priority), job, message_id=job.job_id)
                                     for job in jobs), return_exceptions=True)
    errors = [result for result in results if isinstance(result, BaseException)]
    if errors:
        published = [job for job, result in zip(jobs, results, strict=True) if result is None]
        await withdraw(api, caller, jobs, published)
        if not all(isinstance(error, HadisError | OSError) for error in errors):
            raise errors[0]
        raise unavailable(errors[0], caller.tenant)
    metrics.observe_api_accepted(caller.tenant, len(jobs))
    try:  # one round trip for all of a request's images (and one retry window in an outage, not n)
        await api.store.apply_many([queued_record(job, api.settings) for job in jobs])
    except HadisError as error:  # published: the router writes the records
        log.warning("queued_record_not_written", job_ids=[job.job_id for job in jobs], error=str(error))


async def with_default_webhook(api: Api, caller: Caller, jobs: list[Job]) -> list[Job]:
    """The jobs, those without a webhook_url given the tenant's default one (hadis webhook set), if
    it has one: written into the job, so the router and the record see the same job."""
    if all(job.webhook_url is not None for job in jobs):
        return jobs
    url = await api.store.tenant_webhook_url(caller.tenant)
    if url is None:
        return jobs
    return [job if job.webhook_url is not None else job.model_copy(update={"webhook_url": url}) for job in jobs]


async def withdraw(api: Api, caller: Caller, jobs: list[Job], published: list[Job]) -> None:
    """A request answered 503 leaves nothing running: the jobs already published are recorded
    `failed` before the router takes them (or, routed already, moved there from `queued` or
    `routed`), so the client's retry is the only copy. A job a worker took in between keeps its
    slot until it ends (the api gives it back then)."""
    running: list[str] = []
    for job in published:
        outcome = await api.store.apply(withdrawn_record(job, api.settings))
        if not outcome.applied:
            outcome = await api.store.apply(Change(job.job_id, JobState.failed, {"error": WITHDRAWN},
                                                   detail=WITHDRAWN, only_from=CANCELLABLE))
        if not outcome.applied and outcome.before is not None and not outcome.before.terminal:
            running.append(job.job_id)
    await api.store.release_slots(caller.tenant, [job.job_id for job in jobs if job.job_id not in running])
    if running:
        log.warning("withdrawn_jobs_running", job_ids=running)


def withdrawn_record(job: Job, settings: Settings) -> Change:
    deadline = job.effective_deadline(settings.slo_s, settings.batch_slo_s)
    return Change(job.job_id, JobState.failed, {**job.record_fields(deadline),
                                                "error": WITHDRAWN}, create=True, passing=(JobState.queued,),
                  detail=WITHDRAWN)


def queued_record(job: Job, settings: Settings) -> Change:
    return Change(job.job_id, JobState.queued, job.record_fields(job.effective_deadline(settings.slo_s,
                                                                                         settings.batch_slo_s)),
                  create=True, detail="accepted by the api")


def unavailable(error: BaseException, tenant: str) -> ApiError:
    """The 503 for a publish that failed: a full ingress queue (retry later) or a broker away."""
    if isinstance(error, Overloaded):
        metrics.observe_api_refused(tenant, "busy")
        return ApiError(503, "the ingress queue is full; try again", type="service_unavailable",
                        code="overloaded", headers={"Retry-After": "5"})
    metrics.observe_api_refused(tenant, "unavailable")
    return ApiError(503, f"the job could not be queued: {error}", type="service_unavailable",
                    code="unavailable", headers={"Retry-After": "2"})
