"""Where is my job: its place in its tier's line and its ETA while it waits, its step (k of n) and
model while it runs, on GET /v1/jobs/{id} and as SSE events; and what progress costs the store
(round trips, stream entries, bytes: printed). Real broker and store, tiny pipelines on the CPU."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import pytest_asyncio

from shared.store.progress import JobProgress
from tests.backends.test_interrupt import slow_profile
from tests.integration.test_cancel import WORKERS, deployed, ended, submit, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STEPS = 300  # the tiny SD at 64 px: 5 to 40 ms a step, so 1.5 to 12 s a batch: progress is written every 0.5 s
BATCH_MS = {1: 2000.0, 2: 3000.0}  # the profile's batch times, for the queue model


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory):
    profile = slow_profile(tmp_path_factory.mktemp("profile"), steps=STEPS, latency_ms=BATCH_MS)
    async with deployed(profile) as running:
        yield running


async def sse_events(http, job_id: str) -> list[tuple[str, dict]]:
    events, kind = [], None
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, orjson.loads(line.removeprefix("data: "))))
    return events


async def test_a_running_job_streams_its_steps_and_a_waiting_one_its_place(deployment, monkeypatch):
    stack = deployment.stack
    await stack.set_plan(r=0.0, d=0.0)
    writes: list[list] = []
    write_progress = JobProgress.write_progress

    async def counted(self, batches):
        writes.append(list(batches))
        return await write_progress(self, batches)

    monkeypatch.setattr(JobProgress, "write_progress", counted)
    async with deployment.http() as http:
        first = await submit(http)
        streaming = asyncio.create_task(sse_events(http, first))
        book = WORKERS["light"].model.loaded.book
        await until(lambda: book.progress(first) is not None)
        later = [await submit(http) for _ in range(3)]  # one claimed behind it, two in the tier's line
        waiting = None
        give_up_at = time.monotonic() + 30
        while waiting is None:
            for job_id in later:
                view = (await http.get(f"/v1/jobs/{job_id}")).json()
                if view["state"] == "routed" and view["queue"] is not None:
                    waiting = view
            assert time.monotonic() < give_up_at, "no job seen waiting in the light tier's line"
            await asyncio.sleep(0.01)
        running = (await http.get(f"/v1/jobs/{first}")).json()
        events = await asyncio.wait_for(streaming, 120)
        records = [await ended(http, job_id) for job_id in later]
    assert waiting["queue"]["tier"] == "light" and waiting["queue"]["position"] >= 0 and waiting["eta_s"] > 0
    assert running["state"] == "generating" and running["model"] == "tiny-slow" and running["eta_s"] is not None
    assert running["steps"] in (None, STEPS)  # None until the worker's first write (0.5 s)
    progress = [data for kind, data in events if kind == "progress"]
    assert progress, events
    steps = [data["step"] for data in progress]
    assert steps == sorted(set(steps)) and all(data["steps"] == STEPS for data in progress)
    assert all(data["model"] == "tiny-slow" and data["eta_s"] is not None for data in progress)
    assert [data["state"] for kind, data in events if kind == "state"][-1] == "done"
    assert all(record["state"] == "done" for record in records)
    final = (await stack.store.get(first))
    assert final is not None and final.steps == STEPS
    entries = await stack.store._redis.xrange(stack.store.progress_key)
    mine = [fields for _, fields in entries if first.encode() in fields[b"job_ids"].split(b",")]
    sizes = [sum(len(k) + len(v) for k, v in fields.items()) for fields in mine]
    trips = sum(1 for batches in writes if any(first in job_ids for job_ids, *_ in batches))
    print(f"\nprogress of one job ({STEPS} steps): {len(progress)} SSE progress events, {trips} store round trips "
          f"(one EVALSHA each: HGET + HSET a job, XADD + EXPIRE a batch), {len(mine)} stream entries of "
          f"{sum(sizes) / max(len(mine), 1):.0f} bytes of fields; broker messages: 0")
