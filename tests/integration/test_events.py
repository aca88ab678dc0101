"""The api's event hub on the real Redis stream: one reader for every waiter, idle when nobody waits,
and no change missed by a subscriber that came just after it."""

from __future__ import annotations

import asyncio

import pytest

from shared.events import EventHub
from shared.schemas import JobState
from shared.store import Change
from tests.helpers import make_settings, namespace

pytestmark = [pytest.mark.integration]


async def next_state(queue, timeout_s: float = 5.0) -> tuple[str, JobState]:
    event = await asyncio.wait_for(queue.get(), timeout_s)
    return event.job_id, event.state


async def test_subscribers_get_their_jobs_changes_and_nothing_else():
    settings = make_settings()
    async with namespace(settings) as (_, store):
        hub = EventHub(store)
        await hub.start()
        try:
            await store.apply(Change("early", JobState.queued, create=True))  # nobody waits: nothing read
            with hub.subscribe(["a", "b"]) as queue:
                await store.apply(Change("other", JobState.queued, create=True))
                await store.apply(Change("a", JobState.queued, create=True))
                await store.apply(Change("b", JobState.queued, create=True))
                await store.apply(Change("a", JobState.failed, {"error": "x"}))
                seen = [await next_state(queue) for _ in range(3)]
            assert sorted(seen) == [("a", JobState.failed), ("a", JobState.queued), ("b", JobState.queued)]
            assert hub.watched == 0
            # Idle, then a change made just before the next subscription is still delivered to it
            # (the hub resumes a little before the subscription: a change between a waiter's
            # subscribe and its first read of the record cannot slip through).
            await asyncio.sleep(1.5)
            await store.apply(Change("late", JobState.queued, create=True))
            with hub.subscribe(["late"]) as queue:
                assert await next_state(queue) == ("late", JobState.queued)
        finally:
            await hub.stop()
