"""Test namespaces on the real RabbitMQ and Redis: each test gets its own queues and keys,
deleted afterwards."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.bus import Bus
from shared.settings import Settings
from shared.store import Store


def free_port() -> int:
    """A local TCP port nothing listens on (just now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
