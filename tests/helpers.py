"""Test namespaces on the real RabbitMQ and Redis: each test gets its own queues and keys,
deleted afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from shared.bus import Bus
from shared.ports import free_port_base
from shared.settings import Settings
from shared.store import Store

T = TypeVar("T")


def free_port() -> int:
    """A local TCP port nothing listens on (just now), below the OS's ephemeral ports
    (shared.ports): a server stopped and started again on it (a broker node a fault test kills)
    finds it free, where the OS could have handed it to another process's connection meanwhile."""
    return free_port_base(1)


async def eventually(what: str, check: Callable[[], Awaitable[T]], timeout_s: float = 30.0, poll_s: float = 0.1) -> T:
    """`check()`'s first truthy result, polled every `poll_s`; an AssertionError naming `what` after `timeout_s`."""
    give_up_at = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < give_up_at, f"no {what} within {timeout_s} s"
        await asyncio.sleep(poll_s)
    return result


def make_settings(**overrides) -> Settings:
    values = dict(
        namespace=f"t{uuid.uuid4().hex[:10]}",
        plan_poll_s=0.1,
        batch_wait_ms=20,
        shutdown_grace_s=5.0,
        log_format="console",
        log_level="warning",
        plan_r=0.0,
        plan_d=0.0,
    )
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def namespace(settings: Settings) -> AsyncIterator[tuple[Bus, Store]]:
    """A bare namespace (topology declared, no services) for bus and store tests."""
    bus = await Bus.connect(settings)
    store = await Store.connect(settings)
    try:
        yield bus, store
    finally:
        await bus.delete_namespace()
        await store.delete_namespace()
        await bus.close()
        await store.close()
