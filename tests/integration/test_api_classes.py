"""Service classes at the HTTP door (issue 31): `priority` on both routes, recorded and shown; a key
limited to some classes; the official `openai` package passing it. The api alone, nothing consumes
its queue: jobs stay queued (holding their slots and waiters) until a test cancels them."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from services.api.routes import images as images_module
from services.api.routes import jobs as jobs_module
from tests.helpers import make_settings
from tests.stack import Door, door_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SETTINGS = make_settings(slo_s=60.0, batch_slo_s=900.0)
SMALL = {"prompt": "a red bicycle", "width": 64, "height": 64}


door = door_fixture(SETTINGS)


def error_of(response: httpx.Response) -> dict:
    assert response.status_code >= 400, response.text
    return response.json()["error"]


async def test_a_job_is_interactive_by_default_and_batch_when_asked(door):
    _, key = await door.tenant()
    async with door.http(key) as http:
        plain = await http.post("/v1/jobs", json=SMALL)
        batch = await http.post("/v1/jobs", json={**SMALL, "priority": "batch"})
        assert plain.status_code == batch.status_code == 202, (plain.text, batch.text)
        shown = {name: (await http.get(f"/v1/jobs/{response.json()['id']}")).json()
                 for name, response in (("plain", plain), ("batch", batch))}
    assert shown["plain"]["priority"] == "interactive" and shown["batch"]["priority"] == "batch"
    # The record keeps the class, and a batch job's deadline is the batch objective's.
    record = await door.store.get(batch.json()["id"])
    assert record is not None and record.priority == "batch"
    assert record.deadline == pytest.approx(record.submitted_at + SETTINGS.batch_slo_s)
    interactive = await door.store.get(plain.json()["id"])
    assert interactive.deadline == pytest.approx(interactive.submitted_at + SETTINGS.slo_s)


async def test_a_key_limited_to_a_class_is_refused_the_other_before_anything_is_made(door, monkeypatch):
    made: list[int] = []

    def counting_id() -> str:
        made.append(1)
        return f"id-{len(made)}"

    monkeypatch.setattr(jobs_module, "new_job_id", counting_id)
    monkeypatch.setattr(images_module, "new_job_id", counting_id)
    tenant, key = await door.tenant(classes=("interactive",))
    before = await door.published()
    async with door.http(key) as http:
        for path, body in (("/v1/jobs", {**SMALL, "priority": "batch"}),
                           ("/v1/images/generations", {"prompt": "a fox", "priority": "batch"}),
                           ("/v1/images/generations", {"prompt": "a fox", "priority": "batch", "stream": True})):
            response = await http.post(path, json=body, headers={"Idempotency-Key": "k-1"})
            assert response.status_code == 403, response.text
            error = error_of(response)
            assert (error["code"], error["param"], error["type"]) == ("priority_not_allowed", "priority",
                                                                      "permission_error")
    assert made == [] and await door.published() == before  # no id made, nothing published
    assert await door.store.slots(tenant) == []  # no slot taken
    # The Idempotency-Key was not bound: the same key with an allowed body is a new job.
    async with door.http(key) as http:
        allowed = await http.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "k-1"})
        assert allowed.status_code == 202 and "Idempotent-Replayed" not in allowed.headers


async def test_a_batch_only_key_must_ask_for_batch(door):
    tenant, key = await door.tenant(classes=("batch",))
    async with door.http(key) as http:
        refused = await http.post("/v1/jobs", json=SMALL)  # no priority: interactive
        assert error_of(refused)["code"] == "priority_not_allowed" and "interactive" in error_of(refused)["message"]
        assert await door.store.slots(tenant) == []
        accepted = await http.post("/v1/jobs", json={**SMALL, "priority": "batch"})
        assert accepted.status_code == 202, accepted.text


async def _slot(door: Door, tenant: str, timeout_s: float = 10.0) -> str:
    """The id of the tenant's one job in flight, once the api has recorded it."""
    give_up_at = time.monotonic() + timeout_s
    while True:
        slots = await door.store.slots(tenant)
        if slots and await door.store.get(slots[0]) is not None:
            return slots[0]
        assert time.monotonic() < give_up_at, "the images request made no job"
        await asyncio.sleep(0.05)


async def test_the_openai_package_passes_priority(door):
    tenant, key = await door.tenant()
    client = openai.AsyncOpenAI(base_url=f"{door.base}/v1", api_key=key, max_retries=0)
    waiting = asyncio.create_task(client.images.generate(prompt="a lighthouse", size="64x64",
                                                         extra_body={"priority": "batch"}))
    job_id = await _slot(door, tenant)
    record = await door.store.get(job_id)
    assert record.priority == "batch" and record.metadata["api"] == "images"
    assert record.deadline == pytest.approx(record.submitted_at + SETTINGS.batch_slo_s)
    assert not waiting.done()  # a batch request waits as an interactive one does
    async with door.http(key) as http:
        assert (await http.delete(f"/v1/jobs/{job_id}")).status_code == 200
    with pytest.raises(openai.ConflictError):  # the waiter answers the job's end: 409 job_cancelled
        await asyncio.wait_for(waiting, 10)

    with pytest.raises(openai.BadRequestError) as streamed:
        await client.images.generate(prompt="a lighthouse", stream=True, extra_body={"priority": "batch"})
    assert streamed.value.body["param"] == "priority"
    _, interactive_key = await door.tenant(classes=("interactive",))
    limited = openai.AsyncOpenAI(base_url=f"{door.base}/v1", api_key=interactive_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await limited.images.generate(prompt="a lighthouse", extra_body={"priority": "batch"})
    assert denied.value.code == "priority_not_allowed"


async def test_an_images_request_without_priority_is_interactive(door):
    tenant, key = await door.tenant()
    async with door.http(key) as http:
        waiting = asyncio.create_task(http.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64"}))
        job_id = await _slot(door, tenant)
        record = await door.store.get(job_id)
        assert record.priority == "interactive"
        assert record.deadline == pytest.approx(record.submitted_at + SETTINGS.slo_s)
        assert (await http.get(f"/v1/jobs/{job_id}")).json()["priority"] == "interactive"
        await http.delete(f"/v1/jobs/{job_id}")
        assert error_of(await asyncio.wait_for(waiting, 10))["code"] == "job_cancelled"
