"""The HTTP door tried as a hostile tenant would (issue 29): what one request, or one tenant, may
cost the api and the other tenants. One api in this process, no generating services unless a test
starts them (jobs stay queued: they hold their slots and their waiters as long as a test needs)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import orjson
import pytest

from services.api.routes import images as api_module
from shared.bus import Bus
from shared.errors import Unavailable
from shared.outcome import Applied
from shared.schemas import Job, JobState
from shared.store import Change, Store
from tests.helpers import make_settings
from tests.stack import door_fixture, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SETTINGS = make_settings(slo_s=60.0, api_max_waiters=8, api_max_waiters_per_tenant=5, api_read_rate_per_s=5.0)
SMALL = {"prompt": "a red bicycle", "width": 64, "height": 64}


door = door_fixture(SETTINGS)


def code_of(response: httpx.Response) -> str | None:
    return response.json()["error"]["code"] if response.status_code >= 400 else None


async def test_a_huge_n_is_refused_before_any_id_is_made(door, monkeypatch):
    made = []

    def counting_id() -> str:
        made.append(1)
        return f"id-{len(made)}"

    monkeypatch.setattr(api_module, "new_job_id", counting_id)
    _, http = await door.tenant_http()
    response = await http.post("/v1/images/generations", json={"prompt": "x", "n": 2_000_000})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n", response.text
    assert made == []  # nothing proportional to n was built


async def test_a_past_deadline_cannot_expire_the_quota(door):
    tenant, http = await door.tenant_http(max_active=3)
    held = [await http.post("/v1/jobs", json=SMALL) for _ in range(2)]
    assert [r.status_code for r in held] == [202, 202]
    past = await http.post("/v1/jobs", json={**SMALL, "deadline": 946_684_800.0})  # 2000-01-01
    assert past.status_code == 400 and past.json()["error"]["param"] == "deadline", past.text
    far = await http.post("/v1/jobs", json={**SMALL, "deadline": time.time() + 30 * 86_400})
    assert far.status_code == 400 and far.json()["error"]["param"] == "deadline", far.text
    more = [await http.post("/v1/jobs", json=SMALL) for _ in range(3)]
    assert [r.status_code for r in more] == [202, 429, 429]
    assert len(await door.store.slots(tenant)) == 3


async def test_a_slot_that_lapses_first_does_not_shorten_the_others(door):
    now = time.time()
    assert await door.store.take_slots("lapsing", [("a", now + 600, 1), ("b", now + 600, 1)], 10, 0, 1, now) == ""
    # A slot whose lapse is already near (a job with a close deadline) is taken after them.
    assert await door.store.take_slots("lapsing", [("c", now + 0.2, 1)], 10, 0, 1, now) == ""
    await asyncio.sleep(1.5)
    assert {"a", "b"} <= set(await door.store.slots("lapsing"))  # the key lives on (c is pruned lazily)


async def test_the_api_stamps_submitted_at(door):
    _, http = await door.tenant_http()
    response = await http.post("/v1/jobs", json={**SMALL, "submitted_at": time.time() - 3600})
    assert response.status_code == 400 and response.json()["error"]["param"] == "submitted_at"


async def test_a_job_expired_on_arrival_is_no_demand():
    settings = make_settings()
    async with running_stack(settings, services=("router",)) as stack:
        before = await stack.store.arrivals()
        stale = Job(prompt="late", width=64, height=64, submitted_at=time.time() - 120, slo_s=5)
        fresh = Job(prompt="now", width=64, height=64)
        await stack.submit_many([stale, fresh])
        records = await stack.wait_all([stale.job_id], timeout_s=30)
        assert records[0].state is JobState.expired
        give_up_at = time.monotonic() + 30
        while (await stack.store.get(fresh.job_id)) is None:
            assert time.monotonic() < give_up_at
            await asyncio.sleep(0.05)
        assert await stack.store.arrivals() == before + 1  # the fresh one only


async def test_a_cancel_that_loses_the_race_to_the_end_changes_nothing(door, monkeypatch):
    """A job may be cancelled in any state but a terminal one: one that ends between the api's
    read and its write is not cancelled (the store's script decides), and keeps its image."""
    tenant, http = await door.tenant_http()
    job_id = (await http.post("/v1/jobs", json=SMALL)).json()["id"]
    worker_store = await Store.connect(SETTINGS)
    real_get = Store.get

    async def get_then_the_job_ends(self: Store, wanted: str):
        record = await real_get(self, wanted)
        if wanted == job_id and record is not None and record.state is JobState.queued:
            # The job runs to its end between the api's read and its write.
            await worker_store.apply(Change(job_id, JobState.routed, {"tier": "heavy"}))
            await worker_store.apply(Change(job_id, JobState.generating, {"model": "m"}, owner="w1"))
            await worker_store.apply(Change(job_id, JobState.done, image=b"png", owner="w1"))
        return record

    monkeypatch.setattr(Store, "get", get_then_the_job_ends)
    try:
        response = await http.delete(f"/v1/jobs/{job_id}")
    finally:
        monkeypatch.undo()
        await worker_store.close()
    assert response.status_code == 409 and code_of(response) == "not_cancellable", response.text
    record = await door.store.get(job_id)
    assert record is not None and record.state is JobState.done
    assert await door.store.get_image(job_id) == b"png"


async def test_a_partial_publish_leaves_nothing_running_and_nothing_charged(door, monkeypatch):
    tenant, http = await door.tenant_http()
    published: list[str] = []
    started: list[str] = []
    real_publish = Bus.publish

    async def second_publish_fails(self: Bus, queue: str, payload, *, message_id=None):
        started.append(message_id)
        if queue.endswith(".requests") and len(started) > 1:
            raise Unavailable("the broker went away after the first image")
        await real_publish(self, queue, payload, message_id=message_id)
        published.append(message_id)

    monkeypatch.setattr(Bus, "publish", second_publish_fails)
    try:
        response = await http.post("/v1/images/generations", json={"prompt": "a red bicycle", "n": 3, "size": "64x64"})
    finally:
        monkeypatch.undo()
    assert response.status_code == 503, response.text
    assert len(published) == 1
    record = await door.store.get(published[0])
    assert record is not None and record.state is JobState.failed  # the router will not generate it
    assert await door.store.slots(tenant) == []


async def test_a_client_that_leaves_gives_its_waiter_back(door):
    """Once its job is accepted (published and recorded; a slow broker may hold the accept, and the
    waiter with it, up to the publish timeout), a client that leaves frees its waiter at once,
    not at the job's deadline a minute later."""
    tenant, http = await door.tenant_http()
    async with httpx.AsyncClient(base_url=door.base) as anonymous:
        async def waiters() -> int:
            return (await anonymous.get("/healthz")).json()["waiters"]

        others = await waiters()  # streams of earlier tests' clients may still be open
        host, port = door.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps({"prompt": "a lamp", "size": "64x64"})
        writer.write(b"POST /v1/images/generations HTTP/1.1\r\nHost: api\r\nAuthorization: " +
                     http.headers["authorization"].encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        give_up_at = time.monotonic() + 10
        while await waiters() == others:
            assert time.monotonic() < give_up_at
            await asyncio.sleep(0.05)
        give_up_at = time.monotonic() + SETTINGS.publish_timeout_s + 10
        while not (held := await door.store.slots(tenant)) or await door.store.get(held[0]) is None:
            assert time.monotonic() < give_up_at, "the job was not accepted"
            await asyncio.sleep(0.05)
        writer.close()  # the client leaves; its job waits in the queue for a minute
        give_up_at = time.monotonic() + 10
        while await waiters() > others:
            assert time.monotonic() < give_up_at, "the waiter is held after its client left"
            await asyncio.sleep(0.1)


async def test_one_tenant_cannot_hold_every_waiter(door):
    _, greedy = await door.tenant_http()
    _, honest = await door.tenant_http()
    job_id = (await greedy.post("/v1/jobs", json=SMALL)).json()["id"]
    own_id = (await honest.post("/v1/jobs", json=SMALL)).json()["id"]
    async with contextlib.AsyncExitStack() as streams:
        statuses, readers = [], []  # a reader dropped would close its stream
        for _ in range(SETTINGS.api_max_waiters):
            response = await streams.enter_async_context(greedy.stream("GET", f"/v1/jobs/{job_id}/events"))
            statuses.append(response.status_code)
            if response.status_code == 200:
                readers.append(response.aiter_lines())
                await anext(readers[-1])  # the stream is open: its first event came
        assert statuses.count(200) == SETTINGS.api_max_waiters_per_tenant
        assert set(statuses[SETTINGS.api_max_waiters_per_tenant:]) == {429}
        async with honest.stream("GET", f"/v1/jobs/{own_id}/events") as response:
            assert response.status_code == 200
    await greedy.aclose()
    await honest.aclose()


async def test_reads_have_a_rate(door):
    _, http = await door.tenant_http()
    job_id = (await http.post("/v1/jobs", json=SMALL)).json()["id"]
    many = 8 * int(SETTINGS.api_read_rate_per_s)  # at once: a slow machine cannot refill the bucket between them
    codes = [code_of(response) for response in await asyncio.gather(*(http.get(f"/v1/jobs/{job_id}")
                                                                     for _ in range(many)))]
    assert codes.count(None) >= 2 * SETTINGS.api_read_rate_per_s and "read_rate_exceeded" in codes, codes


async def test_a_cancel_refused_for_the_read_rate_changed_nothing(door):
    """A 429 means "nothing done, retry": a DELETE at the end of its caller's read budget either is
    refused before it cancels, or cancels and answers 200 (its answer is not charged a second read)."""
    _, http = await door.tenant_http()
    job_id = (await http.post("/v1/jobs", json=SMALL)).json()["id"]
    for _ in range(20):
        while code_of(await http.get(f"/v1/jobs/{job_id}")) != "read_rate_exceeded":
            pass  # the bucket is empty now
        await asyncio.sleep(1.25 / SETTINGS.api_read_rate_per_s)  # about one read's worth comes back
        answer = await http.delete(f"/v1/jobs/{job_id}")
        record = await door.store.get(job_id)
        assert record is not None
        if answer.status_code == 200:
            assert answer.json()["state"] == "cancelled" and record.state is JobState.cancelled
            return
        assert answer.status_code == 429 and record.state is not JobState.cancelled, (answer.text, record.state)
    raise AssertionError("no DELETE got a read in 20 tries")


async def test_large_images_cost_their_pixels(door):
    _, http = await door.tenant_http(burst=20, image_mb=4.0)
    big = await http.post("/v1/images/generations", json={"prompt": "x", "n": 2, "size": "2048x2048"})
    assert big.status_code == 400 and code_of(big) == "request_too_large", big.text  # 32 units
    assert (await http.post("/v1/jobs", json={**SMALL, "width": 1024, "height": 1024})).status_code == 202
    # 4 MB of images per image TTL: one 1024x1024 (3 MB raw) fits, a second does not.
    spent = await http.post("/v1/jobs", json={**SMALL, "width": 1024, "height": 1024})
    assert spent.status_code == 429 and code_of(spent) == "image_budget_exceeded", spent.text
    assert (await http.post("/v1/jobs", json=SMALL)).status_code == 202  # a small one still fits


async def test_a_flooding_tenant_keeps_only_its_share_of_a_saturated_fleet():
    store, now = await Store.connect(make_settings()), time.time()  # a namespace of its own: no other tenant
    flood = [(f"a{i}", now + 600, 1.0) for i in range(10)]
    assert await store.take_slots("fair-a", flood, 1000, 10, 1, now) == ""  # alone: its quota only
    assert await store.take_slots("fair-a", [("a10", now + 600, 1.0)], 1000, 10, 1, now) == ""
    assert await store.take_slots("fair-b", [("b0", now + 600, 2.0)], 1000, 10, 1, now) == ""  # within its 5
    assert await store.take_slots("fair-a", [("a11", now + 600, 1.0)], 1000, 10, 1, now) == "fair"
    # Released below its share, the flooding tenant gets in again.
    await store.release_slots("fair-a", [f"a{i}" for i in range(8)])
    assert await store.take_slots("fair-a", [("a12", now + 600, 1.0)], 1000, 10, 1, now) == ""
    await store.delete_namespace()
    await store.close()


async def test_a_cancel_guard_is_decided_in_the_store(door):
    job_id = "guarded-1"
    assert await door.store.create(job_id, JobState.queued, prompt="x")
    await door.store.apply(Change(job_id, JobState.routed, {"tier": "light"}))
    await door.store.apply(Change(job_id, JobState.generating, {"model": "m"}, owner="w"))
    outcome = await door.store.apply(Change(job_id, JobState.failed, only_from=(JobState.queued, JobState.routed)))
    assert outcome.result is Applied.guarded and outcome.before is JobState.generating
