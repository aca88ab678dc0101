"""How a service takes deliveries in: parse each one or dead-letter it, then fold duplicate
deliveries of one job into a single claim. The router, the worker and the judge each opened with
this; written once, a fix to it (what a bad body records, what a stale delivery costs) reaches all
three. `Claimed` is the delivery a service has taken on, with its duplicates: settled together,
so a job is worked on once however many times the broker hands it out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from shared.bus import Delivery
from shared.errors import Disposition, InvalidJob
from shared.logging import bind_job, get_logger
from shared.schemas import Task, job_id_of, parse_message
from shared.service import Service

log = get_logger(__name__)

M = TypeVar("M")


@dataclass
class Claimed:
    """A task a service has taken on: its delivery, and any duplicate deliveries of the same job
    that arrived meanwhile (after a broker reconnect the broker hands out again what a service
    still holds): they are settled with it, so the job is worked on once."""

    delivery: Delivery
    task: Task
    also: list[Delivery] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.task.job.job_id

    @property
    def deliveries(self) -> tuple[Delivery, ...]:
        return (self.delivery, *self.also)

    async def settle(self, disposition: Disposition) -> None:
        for delivery in self.deliveries:
            await delivery.settle(disposition)

    async def fail(self, service: Service, error: BaseException) -> None:
        """Settle every delivery of the job for `error` (Service.settle_failure: requeue, or the
        terminal record and a dead letter)."""
        with bind_job(self.job_id):
            await service.settle_failure(self.delivery, error, [self.job_id], also=self.also,
                                         priority=self.task.job.priority)


async def parse_or_dead_letter(service: Service, delivery: Delivery, parse: Callable[[Delivery], M]) -> M | None:
    """The message a delivery carries, or None when it does not parse: then it is settled as
    invalid (dead-lettered), and only a missing record is written for the id it names (it cannot
    prove the id is its own: Service.settle_failure, owned=False)."""
    try:
        return parse(delivery)
    except InvalidJob as error:
        job_id = job_id_of(delivery.body)
        await service.settle_failure(delivery, error, [job_id] if job_id else [], owned=False)
        return None


async def intake(service: Service, deliveries: Iterable[Delivery], parse: Callable[[Delivery], Task],
                 held: Mapping[str, Claimed] | None = None) -> list[Claimed]:
    """The claims a batch of deliveries makes, in their order: stale deliveries dropped (the
    broker has handed them out again), bad ones dead-lettered, and a duplicate of a job in the
    batch or `held` (claimed earlier, still being worked on) added to that claim."""
    held = held or {}
    taken: dict[str, Claimed] = {}
    for delivery in deliveries:
        if delivery.stale:
            log.info("stale_delivery_dropped")
            continue
        task = await parse_or_dead_letter(service, delivery, parse)
        if task is None:
            continue
        job_id = task.job.job_id
        duplicate = held.get(job_id) or taken.get(job_id)
        if duplicate is not None:
            duplicate.also.append(delivery)  # settled with the delivery already held
        else:
            taken[job_id] = Claimed(delivery, task)
    return list(taken.values())


def parse_task(delivery: Delivery) -> Task:
    """A tier or judge queue's message."""
    return parse_message(Task, delivery.body)
