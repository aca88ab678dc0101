"""RabbitMQ: the queue topology, declared in one place, and the only module that imports aio-pika.

Topology of a namespace `ns` (every name is prefixed, so experiments are isolated):

    ns.requests      quorum  ingress: Job JSON from any backend
    ns.tier.light    quorum  Task for the light workers
    ns.tier.heavy    quorum  Task for the heavy workers
    ns.judge         quorum  Task for the quality judge
    ns.ingress       fanout exchange whose one queue is ns.requests (producers' door)
    ns.dlx           fanout exchange: where every work queue dead-letters
    ns.dead          quorum  dead letters kept for operators (bounded, oldest dropped)
    ns.dead.watch    quorum  dead letters the controller turns into `failed` records

Work queues are bounded in messages and in bytes (x-max-length, x-max-length-bytes,
reject-publish: a full queue refuses the publish, which the publisher sees as Overloaded)
and carry x-delivery-limit as a backstop: a message that crashes its consumer again and
again is dead-lettered by the broker itself. The dead queues are bounded the same ways
(oldest dropped) and drop a message delivered DEAD_LETTER_DELIVERY_LIMIT times: a dead
letter that crashes its consumer cannot loop for ever. The broker itself refuses a body over
BROKER_MAX_MESSAGE_BYTES (its max_message_size, set where the broker is configured:
compose, scripts/ensure_services.sh). Publishes wait for the broker's confirm; consumers
ack only after the result is stored. Every publish carries the connection's user as
user_id, which the broker checks: a consumer knows which user sent a message (Delivery).

Outages: a service waits for the broker at start (HADIS_CONNECT_RETRY_S, with backoff) and
through it at run time: both connections are aio-pika's robust ones, which reconnect and
restore channels and consumers. Consuming a quorum queue whose leader is not elected yet
closes the whole connection on RabbitMQ 3.10 (541); starting a consumer is retried for the
same bound. Publishing and consuming use two connections: under a memory or disk alarm the
broker blocks publishing connections, and acks must still flow. Every publish has a bound
(HADIS_PUBLISH_TIMEOUT_S) that covers its confirm and a reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.exceptions import ChannelAccessRefused
from pydantic import BaseModel
from yarl import URL

from shared.errors import Disposition, Overloaded, Unavailable
from shared.logging import get_logger
from shared.schemas import Tier
from shared.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")

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
RECONNECT_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
INSPECT_TIMEOUT_S = 5.0  # reading a refused queue's depth
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 5.0  # between attempts to connect, declare or start a consumer
CONNECTION_ERRORS = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, asyncio.TimeoutError,
                     RuntimeError)  # aio-pika raises RuntimeError for a robust connection that is reconnecting


async def retry(what: str, attempt: Callable[[], Awaitable[T]], bound_s: float) -> T:
    """Run `attempt` until it succeeds, backing off between failures, for at most bound_s; then
    raise Unavailable. Only connection-level failures are retried."""
    give_up_at = time.monotonic() + bound_s
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await attempt()
        except (ChannelPreconditionFailed, ChannelAccessRefused):
            raise  # a configuration error (arguments that differ, permissions), not an outage
        except CONNECTION_ERRORS as error:
            if time.monotonic() + delay > give_up_at:
                raise Unavailable(f"{what}: RabbitMQ unavailable for {bound_s:.0f} s: {error}") from error
            log.warning("broker_retry", what=what, error=str(error) or type(error).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


@dataclass(frozen=True)
class Queues:
    """The names of a namespace's queues."""

    namespace: str

    @property
    def requests(self) -> str:
        return f"{self.namespace}.requests"

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

    def tier(self, tier: Tier) -> str:
        return f"{self.namespace}.tier.{tier.value}"

    @property
    def work(self) -> tuple[str, ...]:
        return (self.requests, self.tier(Tier.light), self.tier(Tier.heavy), self.judge)


class Delivery:
    """One received message; services settle it with a Disposition and never see aio-pika."""

    def __init__(self, message: AbstractIncomingMessage, service_users: frozenset[str] = frozenset()) -> None:
        self._message = message
        self.body: bytes = message.body
        self.message_id: str | None = message.message_id
        # The broker refuses a publish whose user_id is not the publishing connection's user (unless
        # that user has the `impersonator` tag): the one fact a consumer has about who sent it.
        self.user_id: str | None = message.user_id
        self._service_users = service_users
        # Quorum queues count earlier failed deliveries in x-delivery-count.
        earlier = (message.headers or {}).get("x-delivery-count", 0)
        self.delivery_count: int = int(earlier) + 1 if isinstance(earlier, int) else 1
        self.settled = False

    def tenant_for(self, claimed: str | None) -> str | None:
        """The tenant this message may act for (docs/security.md, "AMQP door"): the tenant it names
        when the services' own broker user sent it (the api sets it from an API key); the sending
        user's name for any other user, whatever it names; none for a message without user_id
        (its sender is unknown). The caller checks that a user's name is a valid tenant."""
        if self.user_id is None:
            return None
        return claimed if self.user_id in self._service_users else self.user_id

    @property
    def stale(self) -> bool:
        """The channel it came on has closed (the connection was lost): it can no longer be acked,
        and the broker has already handed it out again. Work on it is work done twice."""
        return self._message.channel.is_closed

    async def settle(self, disposition: Disposition) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            if disposition is Disposition.ack:
                await self._message.ack()
            elif disposition is Disposition.requeue:
                await self._message.nack(requeue=True)
            else:
                await self._message.reject(requeue=False)
        except Exception as error:
            # The channel died under us (whatever aio-pika raises for it: a closed channel, a
            # timeout, a reconnecting connection): the broker redelivers the message, which is
            # safe because every step is idempotent (shared/policies/steps.py).
            log.warning("settle_failed", disposition=disposition.value, error=f"{type(error).__name__}: {error}")


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


class Consumer:
    def __init__(self, channel: AbstractRobustChannel, queue: aio_pika.abc.AbstractRobustQueue,
                 callback: Callable[[AbstractIncomingMessage], Awaitable[None]], tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._callback = callback
        self._tag: str | None = tag

    async def set_prefetch(self, prefetch: int) -> None:
        """RabbitMQ applies a prefetch to consumers started after it, so the consumer is
        restarted on the same channel; its unacked messages stay with it."""
        await self._channel.set_qos(prefetch_count=prefetch)
        if self._tag is not None:
            with contextlib.suppress(Exception):  # a consumer the broker already dropped
                await self._queue.cancel(self._tag)
            self._tag = None
        # Raises during an outage; the caller tries again, and this call then only consumes.
        self._tag = await self._queue.consume(self._callback)

    async def cancel(self) -> None:
        if self._tag is None:
            return
        try:
            await self._queue.cancel(self._tag)
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as error:
            log.warning("cancel_failed", error=str(error))


def broker_urls(text: str) -> list[str]:
    """HADIS_AMQP_URL: one broker URL, or several separated by commas (the nodes of a cluster)."""
    return [url.strip() for url in text.split(",") if url.strip()]


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that tries the cluster's nodes in turn: each connection attempt (the
    first, and every reconnection after a node died) takes the next URL, so a dead node costs one
    failed attempt (RECONNECT_INTERVAL_S), not an outage. aio-pika reads `url` once per connection
    attempt (and once when constructed); printing the connection does not move it on."""

    def __init__(self, url: object, *args: object, failover_urls: list[str] | None = None, **kwargs: object) -> None:
        self._urls = [URL(each) for each in (failover_urls or [str(url)])]
        self._next = 0
        self.current = self._urls[0]
        super().__init__(url, *args, **kwargs)  # type: ignore[arg-type]
        self._next = 0  # the constructor's read: the first attempt still takes the first URL

    @property
    def url(self) -> URL:
        url = self._urls[self._next % len(self._urls)]
        self._next += 1
        self.current = url
        return url

    @url.setter
    def url(self, value: URL) -> None:
        pass  # the list given at construction is the truth

    @property
    def user(self) -> str:
        """The user this connection logs in as now (aiormq's default: guest)."""
        return self.current.user or "guest"

    def __str__(self) -> str:
        return str(self.current.with_password("******") if self.current.password else self.current)


class Bus:
    def __init__(self, settings: Settings, consuming: AbstractRobustConnection, publishing: AbstractRobustConnection,
                 publisher: AbstractRobustChannel):
        self.settings = settings
        self.queues = Queues(settings.namespace)
        self._connection = consuming
        self._publishing = publishing
        self._publisher = publisher
        self._publisher_generation = 0  # counts renewals of the publishing channel
        self._renewing = asyncio.Lock()
        # Whose messages are the services' own: the users of HADIS_AMQP_URL (one per cluster, usually).
        self.service_users = frozenset(URL(url).user or "guest"
                                       for url in broker_urls(settings.amqp_url.get_secret_value()))

    @classmethod
    async def connect(cls, settings: Settings, *, declare: bool = True, retry_s: float | None = None) -> Bus:
        """Connect (two connections: consuming, publishing) and declare the topology, waiting up to
        retry_s (default: HADIS_CONNECT_RETRY_S) for the broker."""
        bound_s = settings.connect_retry_s if retry_s is None else retry_s
        consuming = await retry("connect", lambda: cls._open(settings, "consume"), bound_s)
        try:
            publishing = await retry("connect", lambda: cls._open(settings, "publish"), bound_s)
            publisher = await retry("channel", lambda: publishing.channel(publisher_confirms=True,
                                                                          on_return_raises=True), bound_s)
            bus = cls(settings, consuming, publishing, publisher)
            if declare:
                await retry("declare", bus.declare, bound_s)
        except BaseException:
            await consuming.close()
            raise
        return bus

    @staticmethod
    async def _open(settings: Settings, role: str) -> AbstractRobustConnection:
        """The first node that answers, of the cluster's (a first attempt that fails is not retried
        by aio-pika: the next node is tried here; `retry` repeats the round)."""
        urls = broker_urls(settings.amqp_url.get_secret_value())
        if not urls:
            raise ValueError("HADIS_AMQP_URL names no broker")
        failure: BaseException = ConnectionError("no broker answered")
        for first in range(len(urls)):
            order = urls[first:] + urls[:first]
            try:
                return await aio_pika.connect_robust(
                    order[0],
                    timeout=CONNECT_TIMEOUT_S,
                    reconnect_interval=RECONNECT_INTERVAL_S,
                    client_properties={"connection_name": f"hadis-{settings.namespace}-{role}"},
                    connection_class=FailoverConnection,
                    failover_urls=order,
                )
            except CONNECTION_ERRORS as error:
                failure = error
        raise failure

    def _work_queue_arguments(self) -> dict:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.queues.dead_letter_exchange,
            "x-delivery-limit": self.settings.max_deliveries + 2,
            "x-max-length": self.settings.queue_max_length,
            "x-max-length-bytes": self.settings.queue_max_length * QUEUE_BYTES_PER_MESSAGE,
            "x-overflow": "reject-publish",
        }

    async def declare(self) -> None:
        """Declare the whole topology; idempotent, every service calls it at start. A queue declared
        earlier with other arguments (an older version's) is refused (PRECONDITION_FAILED): the
        queues are replaced as docs/security.md ("AMQP door") says, never changed here."""
        try:
            await self._declare()
        except ChannelPreconditionFailed as error:
            log.error("topology_differs", error=str(error),
                      hint="queues declared with other arguments: see docs/security.md, AMQP door, upgrading")
            raise

    async def _declare(self) -> None:
        channel = self._publisher
        dlx = await channel.declare_exchange(
            self.queues.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_arguments = {
            "x-queue-type": "quorum",
            "x-max-length": DEAD_LETTER_MAX_LENGTH,
            "x-max-length-bytes": DEAD_LETTER_MAX_LENGTH * QUEUE_BYTES_PER_MESSAGE,
            "x-overflow": "drop-head",
            "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT,  # no dead-letter exchange: then dropped
        }
        for name in (self.queues.dead, self.queues.dead_watch):
            queue = await channel.declare_queue(name, durable=True, arguments=dead_arguments)
            await queue.bind(dlx)
        declared = {name: await channel.declare_queue(name, durable=True, arguments=self._work_queue_arguments())
                    for name in self.queues.work}
        ingress = await channel.declare_exchange(self.queues.ingress_exchange, aio_pika.ExchangeType.FANOUT,
                                                 durable=True)
        await declared[self.queues.requests].bind(ingress)

    async def publish(self, queue: str, payload: BaseModel | bytes, *, message_id: str | None = None) -> None:
        """Publish persistently to a queue and wait for the broker's confirm, for at most
        HADIS_PUBLISH_TIMEOUT_S in all (a reconnection, a blocked connection included): then
        Unavailable. A queue at its length bound, or one that does not exist, raises Overloaded; a
        refusal below the bound (a quorum queue electing a leader; one at its byte bound, which a
        publisher cannot read) is retried within the bound."""
        body = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        bound_s = self.settings.publish_timeout_s
        give_up_at = time.monotonic() + bound_s
        delay = BACKOFF_FIRST_S
        while True:
            remaining = give_up_at - time.monotonic()
            generation = self._publisher_generation
            # user_id: the user of the node connected now (after a failover, another URL's).
            message = aio_pika.Message(body, content_type="application/json", message_id=message_id,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=self._user())
            try:
                await asyncio.wait_for(self._publisher.default_exchange.publish(message, routing_key=queue),
                                       timeout=max(remaining, 0.01))
                return
            except PublishError as error:  # returned: no queue of that name (the stack never declared it)
                raise Overloaded(f"queue {queue} does not exist: the message came back unroutable") from error
            except DeliveryError as error:
                if await self._at_bound(queue):
                    raise Overloaded(f"queue {queue} is full ({self.settings.queue_max_length} messages)") from error
                # Refused below its bound: a quorum queue whose leader's node died. RabbitMQ 3.10 goes on
                # refusing that channel's publishes after a new leader is elected (seconds later; seen in
                # tests/faults/test_cluster.py), and a new channel is accepted: publish again on one.
                problem: BaseException = error
                await self._renew_publisher(generation)
            except CONNECTION_ERRORS as error:
                problem = error
            if time.monotonic() + delay > give_up_at:
                raise Unavailable(f"publish to {queue} failed for {bound_s:.0f} s: "
                                  f"{problem or type(problem).__name__}") from problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _user(self) -> str | None:
        return self._publishing.user if isinstance(self._publishing, FailoverConnection) else None

    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        """Consume on a channel of its own (so its prefetch can change with the plan), retried
        through an outage for HADIS_CONNECT_RETRY_S. A handler that raises leaves the message
        unsettled: it is requeued, never dropped."""

        async def on_message(message: AbstractIncomingMessage) -> None:
            delivery = Delivery(message, self.service_users)
            try:
                await handler(delivery)
            except Exception:
                log.exception("handler_crashed", queue=queue)
                await delivery.settle(Disposition.requeue)

        async def start() -> Consumer:
            channel, amqp_queue = await self._consumer_channel(queue, prefetch)
            try:
                tag = await amqp_queue.consume(on_message)
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()  # else the robust channel would reopen itself
                raise
            return Consumer(channel, amqp_queue, on_message, tag)

        return await retry(f"consume {queue}", start, self.settings.connect_retry_s)

    async def _consumer_channel(self, queue: str, prefetch: int):
        """A channel and the queue declared (passively) on it: on the robust channel, so the consumer
        is restored after a reconnect. A quorum queue just declared can be briefly unavailable
        ("home node ... is down") while it elects its leader: retried like an outage."""
        channel = await self._connection.channel()
        try:
            await channel.set_qos(prefetch_count=prefetch)
            return channel, await channel.declare_queue(queue, passive=True)
        except BaseException as error:
            with contextlib.suppress(Exception):
                await channel.close()  # else the robust channel would reopen itself
            if isinstance(error, ChannelNotFoundEntity):
                log.warning("queue_not_ready", queue=queue)
                raise ConnectionError(f"queue {queue} is not ready: {error}") from error
            raise

    async def _renew_publisher(self, seen_generation: int) -> None:
        """A new publishing channel, once for all the publishes refused on the current one."""
        async with self._renewing:
            if self._publisher_generation != seen_generation:
                return  # another publish renewed it already
            try:
                channel = await self._publishing.channel(publisher_confirms=True, on_return_raises=True)
            except CONNECTION_ERRORS as error:
                log.warning("publisher_channel_not_renewed", error=str(error))
                return
            old, self._publisher = self._publisher, channel
            self._publisher_generation += 1
            with contextlib.suppress(*CONNECTION_ERRORS):
                await old.close()

    async def _at_bound(self, queue: str) -> bool:
        """Whether a queue that refused a message is at its length bound (reject-publish); False
        when that cannot be read just now (a cluster electing a leader): then it was not full."""
        try:
            return await asyncio.wait_for(self.depth(queue), INSPECT_TIMEOUT_S) >= self.settings.queue_max_length
        except (*CONNECTION_ERRORS, ChannelNotFoundEntity):
            return False

    async def _inspect(self, queue: str):
        # A channel of its own: the robust publisher channel answers passive declares from a cache.
        channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True, robust=False)
            return declared.declaration_result
        finally:
            await channel.close()

    async def depth(self, queue: str) -> int:
        """Messages ready in a queue (not counting those delivered and unacked)."""
        return (await self._inspect(queue)).message_count or 0

    async def consumers(self, queue: str) -> int:
        return (await self._inspect(queue)).consumer_count or 0

    async def depths(self) -> dict[str, int]:
        return {name: await self.depth(name) for name in self.queues.work}

    async def delete_namespace(self) -> None:
        """Remove every queue and the exchange of this namespace (experiments, tests)."""
        channel = await self._connection.channel()
        for name in (*self.queues.work, self.queues.dead, self.queues.dead_watch):
            await channel.queue_delete(name)
        await channel.exchange_delete(self.queues.dead_letter_exchange)
        await channel.exchange_delete(self.queues.ingress_exchange)
        await channel.close()

    async def close(self) -> None:
        await self._publishing.close()
        await self._connection.close()
