"""Consuming: a channel per consumer, deliveries settled with a Disposition.

Consumers ack only after the result is stored. Every publish carries the connection's user as
user_id, which the broker checks: a consumer knows which user sent a message (Delivery).
Consuming a quorum queue whose leader is not elected yet closes the whole connection on
RabbitMQ 3.10 (541); starting a consumer is retried like an outage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection, AbstractRobustQueue
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity

from shared.bus.connection import retry
from shared.errors import Disposition
from shared.logging import get_logger

log = get_logger("shared.bus")  # one logger for the whole bus: operators filter on it


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
        and the broker has already handed it out again. Work on it is work done twice. A channel
        that is gone altogether (aio-pika raises rather than answer) is closed too: asking must not
        crash the service that asks, as it did the judge in a broker restart under load."""
        try:
            return self._message.channel.is_closed
        except ChannelInvalidStateError:
            return True

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
    def __init__(self, channel: AbstractRobustChannel, queue: AbstractRobustQueue,
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


async def start_consumer(connection: AbstractRobustConnection, queue: str, handler: DeliveryHandler, *, prefetch: int,
                  service_users: frozenset[str], retry_s: float) -> Consumer:
    """Consume on a channel of its own (so its prefetch can change with the plan), retried
    through an outage for retry_s. A handler that raises leaves the message unsettled: it is
    requeued, never dropped."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        delivery = Delivery(message, service_users)
        try:
            await handler(delivery)
        except Exception:
            log.exception("handler_crashed", queue=queue)
            await delivery.settle(Disposition.requeue)

    async def start() -> Consumer:
        channel, amqp_queue = await _consumer_channel(connection, queue, prefetch)
        try:
            tag = await amqp_queue.consume(on_message)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()  # else the robust channel would reopen itself
            raise
        return Consumer(channel, amqp_queue, on_message, tag)

    return await retry(f"consume {queue}", start, retry_s)


async def _consumer_channel(connection: AbstractRobustConnection, queue: str, prefetch: int):
    """A channel and the queue declared (passively) on it: on the robust channel, so the consumer
    is restored after a reconnect. A quorum queue just declared can be briefly unavailable
    ("home node ... is down") while it elects its leader: retried like an outage."""
    channel = await connection.channel()
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
