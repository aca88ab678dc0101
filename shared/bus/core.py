"""The Bus: what services hold. It owns the two connections and hands each concern (topology,
publishing, consuming) to its module; queue depths are read here, on the consuming connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity
from pydantic import BaseModel

from shared.bus.connection import CONNECTION_ERRORS, open_connection, retry, service_users
from shared.bus.consuming import Consumer, DeliveryHandler, start_consumer
from shared.bus.publishing import Publisher, open_channel
from shared.bus.topology import Queues, declare_topology, delete_topology
from shared.settings import Settings

INSPECT_TIMEOUT_S = 5.0  # reading a refused queue's depth, or taking a message (Bus.take)
# Bus.take's handler: (body, message_id) -> whether the message was handed on (ack) or not (requeue).
TakeHandler = Callable[[bytes, str | None], Awaitable[bool]]


class Bus:
    def __init__(self, settings: Settings, consuming: AbstractRobustConnection, publishing: AbstractRobustConnection,
                 publisher: AbstractRobustChannel):
        self.settings = settings
        self.queues = Queues(settings.namespace)
        self._connection = consuming
        self._publisher = Publisher(publishing, publisher, timeout_s=settings.publish_timeout_s,
                                    queue_max_length=settings.queue_max_length, at_bound=self._at_bound)
        self.service_users = service_users(settings)

    @classmethod
    async def connect(cls, settings: Settings, *, declare: bool = True, retry_s: float | None = None) -> Bus:
        """Connect (two connections: consuming, publishing) and declare the topology, waiting up to
        retry_s (default: HADIS_CONNECT_RETRY_S) for the broker."""
        bound_s = settings.connect_retry_s if retry_s is None else retry_s
        consuming = await retry("connect", lambda: open_connection(settings, "consume"), bound_s)
        try:
            publishing = await retry("connect", lambda: open_connection(settings, "publish"), bound_s)
            publisher = await retry("channel", lambda: open_channel(publishing), bound_s)
            bus = cls(settings, consuming, publishing, publisher)
            if declare:
                await retry("declare", bus.declare, bound_s)
        except BaseException:
            await consuming.close()
            raise
        return bus

    async def declare(self) -> None:
        """Declare the whole topology (shared/bus/topology.py); idempotent, every service calls it at start."""
        await declare_topology(self._publisher.channel, self.settings, self.queues)

    async def publish(self, queue: str, payload: BaseModel | bytes, *, message_id: str | None = None) -> None:
        """Publish persistently and wait for the broker's confirm, within HADIS_PUBLISH_TIMEOUT_S
        (shared/bus/publishing.py): a full or missing queue raises Overloaded, an outage Unavailable."""
        body = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        await self._publisher.publish(queue, body, message_id=message_id)

    async def consume(self, queue: str, handler: DeliveryHandler, *, prefetch: int) -> Consumer:
        """Consume on a channel of its own, retried through an outage for HADIS_CONNECT_RETRY_S
        (shared/bus/consuming.py). A handler that raises leaves the message requeued, never dropped."""
        return await start_consumer(self._connection, queue, handler, prefetch=prefetch,
                                    service_users=self.service_users, retry_s=self.settings.connect_retry_s)

    async def take(self, source: str, count: int, handle: TakeHandler) -> int:
        """Take up to `count` messages from the head of `source`, one at a time (basic.get, on a
        channel of its own), each through `handle(body, message_id)`: acked when it returns True,
        put back (nack, requeue) when it returns False or raises, which ends the run. The handler
        publishes the message where it goes before it returns: a crash in between leaves it in
        both queues, and the store's claim lets one of them run. How many were acked."""
        channel = await self._connection.channel()
        taken = 0
        try:
            queue = await channel.get_queue(source, ensure=False)
            while taken < count:
                message = await queue.get(no_ack=False, fail=False, timeout=INSPECT_TIMEOUT_S)
                if message is None:
                    break
                try:
                    done = await handle(message.body, message.message_id)
                except BaseException:
                    await message.nack(requeue=True)
                    raise
                if not done:
                    await message.nack(requeue=True)
                    break
                await message.ack()
                taken += 1
        finally:
            await channel.close()
        return taken

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
        await delete_topology(channel, self.queues)
        await channel.close()

    async def close(self) -> None:
        await self._publisher.connection.close()
        await self._connection.close()
