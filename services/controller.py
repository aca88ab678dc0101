"""The controller. For now it publishes the static plan from its settings as a versioned
record (the planner replaces this), keeps the plan's TTL fresh, reports queue depths, and
turns every dead letter into a terminal `failed` record, so that no job is left in a
non-terminal state when the broker gives up on its message."""

from __future__ import annotations

import asyncio

from shared.bus import Delivery
from shared.errors import Disposition
from shared.logging import bind_job, get_logger
from shared.schemas import JobState, Plan, job_id_of
from shared.service import Service, run

log = get_logger(__name__)

HOUSEKEEPING_S = 30.0
DEAD_WATCH_PREFETCH = 32
PLAN_DECISION_FIELDS = ("light_model", "heavy_model", "r", "d", "light_batch", "heavy_batch")


def same_decision(a: Plan, b: Plan) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in PLAN_DECISION_FIELDS)


async def publish_static_plan(service: Service) -> Plan:
    """Publish the settings' plan unless the current one already says the same."""
    wanted = service.settings.static_plan(version=0)
    current = await service.store.get_plan()
    if current is not None and same_decision(current, wanted):
        return current
    plan = await service.store.publish_plan(wanted.model_dump(exclude={"version", "created_at"}))
    log.info("plan_published", version=plan.version, light=plan.light_model, heavy=plan.heavy_model,
             r=plan.r, d=plan.d)
    return plan


async def on_dead_letter(service: Service, delivery: Delivery) -> None:
    job_id = job_id_of(delivery.body)
    if job_id is not None:
        with bind_job(job_id):
            await service.store.fail(job_id, JobState.failed, "dead-lettered: the job could not be processed")
            log.warning("dead_letter_recorded")
    await delivery.settle(Disposition.ack)


async def housekeeping(service: Service) -> None:
    while not service.stopping.is_set():
        try:
            await service.store.refresh_plan_ttl()
            log.info("queue_depths", **{name.split(".", 1)[1]: n for name, n in (await service.bus.depths()).items()})
        except Exception as error:  # housekeeping must never stop the controller
            log.warning("housekeeping_failed", error=str(error))
        try:
            await asyncio.wait_for(service.stopping.wait(), timeout=HOUSEKEEPING_S)
        except asyncio.TimeoutError:
            pass


async def main(service: Service) -> None:
    await publish_static_plan(service)
    await service.plans.refresh()

    async def handle(delivery: Delivery) -> None:
        await on_dead_letter(service, delivery)

    consumer = await service.bus.consume(service.bus.queues.dead_watch, handle, prefetch=DEAD_WATCH_PREFETCH)
    await housekeeping(service)
    await consumer.cancel()


if __name__ == "__main__":
    run("controller", main)
