import asyncio

import pytest

from shared.schemas import JobState
from tests.helpers import make_settings, namespace

pytestmark = pytest.mark.integration


async def test_record_lifecycle_history_and_ttl():
    settings = make_settings(job_ttl_s=600)
    async with namespace(settings) as (_, store):
        assert await store.create("j1", prompt="a cat", submitted_at=1.0, deadline=61.0, metadata={"k": "v"})
        assert not await store.create("j1", prompt="again")
        assert await store.transition("j1", JobState.routed, tier="light", router_score=0.5)
        assert await store.transition("j1", JobState.done, image=b"\x89PNG...", model="m")
        record = await store.get("j1")
        assert record.state is JobState.done and record.tier == "light" and record.model == "m"
        assert record.metadata == {"k": "v"} and record.router_score == 0.5
        assert [t.state for t in record.history] == [JobState.queued, JobState.routed, JobState.done]
        assert await store.get_image("j1") == b"\x89PNG..."
        raw = store._redis
        keys = [key async for key in raw.scan_iter(match=f"{settings.namespace}:*")]
        assert keys
        for key in keys:
            assert 0 < await raw.ttl(key) <= 600, key


async def test_terminal_state_is_final_and_image_written_once():
    async with namespace(make_settings()) as (_, store):
        await store.create("j2")
        assert await store.transition("j2", JobState.done, image=b"first")
        assert not await store.transition("j2", JobState.done, image=b"second")
        assert not await store.transition("j2", JobState.failed, error="late")
        record = await store.get("j2")
        assert record.state is JobState.done and record.error is None
        assert await store.get_image("j2") == b"first"
        assert [t.state for t in record.history] == [JobState.queued, JobState.done]


async def test_transition_without_record_raises_and_fail_creates():
    async with namespace(make_settings()) as (_, store):
        with pytest.raises(KeyError):
            await store.transition("nope", JobState.routed)
        assert await store.fail("nope", JobState.failed, "422 InvalidJob: bad")
        record = await store.get("nope")
        assert record.state is JobState.failed and record.error == "422 InvalidJob: bad"


async def test_wait_terminal_sees_completion_before_and_after_subscribe():
    async with namespace(make_settings()) as (_, store):
        await store.create("early")
        await store.transition("early", JobState.done)
        assert (await store.wait_terminal("early", 1.0)).state is JobState.done

        await store.create("late")
        waiter = asyncio.create_task(store.wait_terminal("late", 10.0))
        await asyncio.sleep(0.2)
        await store.transition("late", JobState.failed, error="x")
        assert (await waiter).state is JobState.failed

        await store.create("never")
        assert await store.wait_terminal("never", 0.3) is None


async def test_plan_versions_increase():
    settings = make_settings()
    async with namespace(settings) as (_, store):
        assert await store.get_plan() is None
        fields = settings.static_plan(version=0).model_dump(exclude={"version", "created_at"})
        first = await store.publish_plan(fields)
        second = await store.publish_plan({**fields, "r": 0.7})
        assert second.version == first.version + 1
        assert (await store.get_plan()).r == 0.7


async def test_events_stream_records_every_transition():
    async with namespace(make_settings()) as (_, store):
        await store.create("e1")
        await store.transition("e1", JobState.done)
        events = await store.read_events()
        assert [(e["job_id"], e["state"]) for _, e in events] == [("e1", "queued"), ("e1", "done")]
