"""The queues and exchanges of a namespace, their names and their bounds, declared in one place.

Work queues are bounded in messages and in bytes (x-max-length, x-max-length-bytes,
reject-publish: a full queue refuses the publish, which the publisher sees as Overloaded)
and carry x-delivery-limit as a backstop: a message that crashes its consumer again and
again is dead-lettered by the broker itself. The dead queues are bounded the same ways
(oldest dropped) and drop a message delivered DEAD_LETTER_DELIVERY_LIMIT times: a dead
letter that crashes its consumer cannot loop for ever. The broker itself refuses a body over
BROKER_MAX_MESSAGE_BYTES (its max_message_size, set where the broker is configured:
compose, scripts/ensure_services.sh).
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import ChannelPreconditionFailed

from shared.logging import get_logger
from shared.schemas import Tier
from shared.settings import Settings

log = get_logger("shared.bus")  # one logger for the whole bus: operators filter on it

DEAD_LETTER_MAX_LENGTH = 10_000
# Bytes: the largest message a service accepts is MAX_MESSAGE_BYTES (64 KiB; a valid Job is ~21 KB
# at the most, and the Task that wraps it a few hundred bytes more). The broker refuses twice that
# (its max_message_size, configured outside this code): never a service's own message, and no
# producer can make the broker or a consumer buffer more than 128 KiB a message (default: 128 MiB).
BROKER_MAX_MESSAGE_BYTES = 128 * 1024
# A queue's bytes: its length bound times 4 KiB, several times a typical job (under 1 KiB), so that
# the count bound is what legitimate traffic meets, while bodies near the broker's bound fill it
# 32 times sooner than their count would.
QUEUE_BYTES_PER_MESSAGE = 4 * 1024
DEAD_LETTER_DELIVERY_LIMIT = 20  # returned 20 times (20 crashes of its consumer, 20 looks with requeue): dropped


@dataclass(frozen=True)
class Queues:
    """The names of a namespace's queues."""

    namespace: str

    @property
    def requests(self) -> str:
        return f"{self.namespace}.requests"

    @property
    def requests_batch(self) -> str:
        """The batch class's ingress (docs/classes.md): a bulk submission of batch jobs waits here,
        never in front of interactive jobs in `requests` (the router consumes both, each with its
        own prefetch, so an interactive job waits behind at most a prefetch of batch jobs)."""
        return f"{self.namespace}.requests.batch"

    def ingress_for(self, priority: str) -> str:
        """The ingress queue of a job of this service class."""
        return self.requests_batch if priority == "batch" else self.requests

    @property
    def judge(self) -> str:
        return f"{self.namespace}.judge"

    @property
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_watch(self) -> str:
        return f"{self.namespace}.dead.watch"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def ingress_exchange(self) -> str:
        """A fanout exchange whose one queue is `requests`: a producer allowed to write to it and
        nothing else can submit jobs and do nothing more (docs/security.md)."""
        return f"{self.namespace}.ingress"

    @property
    def ingress_batch_exchange(self) -> str:
        """The producers' door for batch jobs: a fanout exchange whose one queue is `requests_batch`."""
        return f"{self.namespace}.ingress.batch"

    def tier(self, tier: Tier) -> str:
        return f"{self.namespace}.tier.{tier.value}"

    def batch(self, tier: Tier) -> str:
        """The tier's batch-class jobs (shared/policies/classes.py): a queue of their own, which the
        tier's workers read only when no interactive job waits (quorum queues have no priorities
        on RabbitMQ 3.10, and a classic priority queue is not replicated)."""
        return f"{self.namespace}.tier.{tier.value}.batch"

    @property
    def work(self) -> tuple[str, ...]:
        return (self.requests, self.tier(Tier.light), self.tier(Tier.heavy), self.judge,
                self.batch(Tier.light), self.batch(Tier.heavy), self.requests_batch)


def dead_letter_arguments() -> dict:
    return {
        "x-queue-type": "quorum",
        "x-max-length": DEAD_LETTER_MAX_LENGTH,
        "x-max-length-bytes": DEAD_LETTER_MAX_LENGTH * QUEUE_BYTES_PER_MESSAGE,
        "x-overflow": "drop-head",
        "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT,  # no dead-letter exchange: then dropped
    }


def work_queue_arguments(settings: Settings, queues: Queues) -> dict:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": queues.dead_letter_exchange,
        "x-delivery-limit": settings.max_deliveries + 2,
        "x-max-length": settings.queue_max_length,
        "x-max-length-bytes": settings.queue_max_length * QUEUE_BYTES_PER_MESSAGE,
        "x-overflow": "reject-publish",
    }


async def declare_topology(channel: AbstractChannel, settings: Settings, queues: Queues) -> None:
    """Declare the whole topology; idempotent, every service calls it at start. A queue declared
    earlier with other arguments (an older version's) is refused (PRECONDITION_FAILED): the
    queues are replaced as docs/security.md ("AMQP door") says, never changed here."""
    try:
        await _declare(channel, settings, queues)
    except ChannelPreconditionFailed as error:
        log.error("topology_differs", error=str(error),
                  hint="queues declared with other arguments: see docs/security.md, AMQP door, upgrading")
        raise


async def _declare(channel: AbstractChannel, settings: Settings, queues: Queues) -> None:
    dlx = await channel.declare_exchange(queues.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
    for name in (queues.dead, queues.dead_watch):
        queue = await channel.declare_queue(name, durable=True, arguments=dead_letter_arguments())
        await queue.bind(dlx)
    declared = {name: await channel.declare_queue(name, durable=True, arguments=work_queue_arguments(settings, queues))
                for name in queues.work}
    for exchange, bound in ((queues.ingress_exchange, queues.requests),
                            (queues.ingress_batch_exchange, queues.requests_batch)):
        ingress = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        await declared[bound].bind(ingress)


async def delete_topology(channel: AbstractChannel, queues: Queues) -> None:
    """Remove every queue and the exchanges of a namespace (experiments, tests)."""
    for name in (*queues.work, queues.dead, queues.dead_watch):
        await channel.queue_delete(name)
    await channel.exchange_delete(queues.dead_letter_exchange)
    await channel.exchange_delete(queues.ingress_exchange)
    await channel.exchange_delete(queues.ingress_batch_exchange)
