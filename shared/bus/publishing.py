"""Publishing with confirms, on a connection of its own.

Publishes wait for the broker's confirm. Publishing and consuming use two connections: under a
memory or disk alarm the broker blocks publishing connections, and acks must still flow. Every
publish has a bound (HADIS_PUBLISH_TIMEOUT_S) that covers its confirm and a reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError, PublishError

from shared.bus.connection import BACKOFF_FIRST_S, BACKOFF_MAX_S, CONNECTION_ERRORS, FailoverConnection
from shared.errors import Overloaded, Unavailable
from shared.logging import get_logger

log = get_logger("shared.bus")  # one logger for the whole bus: operators filter on it


async def open_channel(connection: AbstractRobustConnection) -> AbstractRobustChannel:
    """A channel whose publishes wait for the broker's confirm and raise when returned unroutable."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


class Publisher:
    """The publishing connection and its channel, renewed when the broker goes on refusing it.

    `at_bound` says whether a queue that refused a message is at its length bound (the bus
    reads it on the consuming connection, which a blocked publishing connection cannot do)."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractRobustChannel, *,
                 timeout_s: float, queue_max_length: int, at_bound: Callable[[str], Awaitable[bool]]) -> None:
        self.connection = connection
        self.channel = channel
        self._timeout_s = timeout_s
        self._queue_max_length = queue_max_length
        self._at_bound = at_bound
        self._generation = 0  # counts renewals of the channel
        self._renewing = asyncio.Lock()

    async def publish(self, queue: str, body: bytes, *, message_id: str | None = None) -> None:
        """Publish persistently to a queue and wait for the broker's confirm, for at most
        HADIS_PUBLISH_TIMEOUT_S in all (a reconnection, a blocked connection included): then
        Unavailable. A queue at its length bound, or one that does not exist, raises Overloaded; a
        refusal below the bound (a quorum queue electing a leader; one at its byte bound, which a
        publisher cannot read) is retried within the bound."""
        bound_s = self._timeout_s
        give_up_at = time.monotonic() + bound_s
        delay = BACKOFF_FIRST_S
        while True:
            remaining = give_up_at - time.monotonic()
            generation = self._generation
            # user_id: the user of the node connected now (after a failover, another URL's).
            message = aio_pika.Message(body, content_type="application/json", message_id=message_id,
                                       delivery_mode=aio_pika.DeliveryMode.PERSISTENT, user_id=self._user())
            try:
                await asyncio.wait_for(self.channel.default_exchange.publish(message, routing_key=queue),
                                       timeout=max(remaining, 0.01))
                return
            except PublishError as error:  # returned: no queue of that name (the stack never declared it)
                raise Overloaded(f"queue {queue} does not exist: the message came back unroutable") from error
            except DeliveryError as error:
                if await self._at_bound(queue):
                    raise Overloaded(f"queue {queue} is full ({self._queue_max_length} messages)") from error
                # Refused below its bound: a quorum queue whose leader's node died. RabbitMQ 3.10 goes on
                # refusing that channel's publishes after a new leader is elected (seconds later; seen in
                # tests/faults/test_cluster.py), and a new channel is accepted: publish again on one.
                problem: BaseException = error
                await self._renew(generation)
            except CONNECTION_ERRORS as error:
                problem = error
            if time.monotonic() + delay > give_up_at:
                raise Unavailable(f"publish to {queue} failed for {bound_s:.0f} s: "
                                  f"{problem or type(problem).__name__}") from problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _user(self) -> str | None:
        return self.connection.user if isinstance(self.connection, FailoverConnection) else None

    async def _renew(self, seen_generation: int) -> None:
        """A new publishing channel, once for all the publishes refused on the current one."""
        async with self._renewing:
            if self._generation != seen_generation:
                return  # another publish renewed it already
            try:
                channel = await open_channel(self.connection)
            except CONNECTION_ERRORS as error:
                log.warning("publisher_channel_not_renewed", error=str(error))
                return
            old, self.channel = self.channel, channel
            self._generation += 1
            with contextlib.suppress(*CONNECTION_ERRORS):
                await old.close()
