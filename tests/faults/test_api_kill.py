"""202 means durable: kill -9 the api while clients keep posting jobs, and every job it accepted
still ends `done`, none twice. Requests cut off by the kill got no 202, so nothing was promised."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from shared import apikeys
from shared.client import Client
from shared.policies.tenancy import Limits
from shared.schemas import JobState
from shared.supervisor import Child
from tests.faults.harness import fault_settings
from tests.faults.processes import Outcome, cluster, double_work, read_all_events
from tests.helpers import free_port

pytestmark = [pytest.mark.integration]

CLIENTS = 6
PAUSE_S = 0.3  # between one client's posts: about 20 jobs/s in all, what the emulated workers keep up with
# Jobs accepted before each kill and after the last restart: a count, not a time, so that a loaded
# machine (CI's lanes beside each other once let 12 through in 6 s) still kills mid-stream.
ACCEPTED_EACH = 8


async def accepting(accepted: list[str], more: int, timeout_s: float = 60.0) -> None:
    """Until `more` jobs beyond those accepted so far are accepted."""
    wanted, give_up_at = len(accepted) + more, time.monotonic() + timeout_s
    while len(accepted) < wanted:
        assert time.monotonic() < give_up_at, f"{len(accepted)} accepted, {wanted} wanted within {timeout_s} s"
        await asyncio.sleep(0.05)


async def post_jobs(base: str, key: str, stop: asyncio.Event, accepted: list[str], cut: list[str]) -> None:
    """One client posting jobs back to back until `stop`: ids answered 202 go to `accepted`,
    requests that got no answer (the api died under them) to `cut`."""
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
        index = 0
        while not stop.is_set():
            index += 1
            try:
                response = await http.post("/v1/jobs", json={"prompt": f"lighthouse {index}", "slo_s": 120})
            except httpx.TransportError as error:
                cut.append(type(error).__name__)
                await asyncio.sleep(0.05)
                continue
            assert response.status_code in (202, 503), response.text
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            await asyncio.sleep(PAUSE_S)


async def test_kill_9_of_the_api_mid_request_loses_no_accepted_job():
    port = free_port()
    settings = fault_settings(api_port=port)
    base = f"http://127.0.0.1:{port}"
    client = await Client.open(settings)
    key, stored = apikeys.new_key("durable")
    await client.store.put_api_key(stored)
    await client.store.set_tenant_limits("durable", Limits(rate=10_000, burst=10_000, max_active=100_000))
    api = Child("api", "services.api", settings.as_env())
    since_id = await client.store.last_event_id()
    accepted: list[str] = []
    cut: list[str] = []
    try:
        async with cluster(settings, client):
            api.start()
            await wait_healthy(base)
            stop = asyncio.Event()
            posting = [asyncio.create_task(post_jobs(base, key, stop, accepted, cut)) for _ in range(CLIENTS)]
            for _kill in range(2):
                await accepting(accepted, ACCEPTED_EACH)
                assert api.process is not None
                api.process.kill()  # SIGKILL: no graceful anything, requests in flight are cut
                api.process.wait()
                api.start()
                await wait_healthy(base)
            await accepting(accepted, ACCEPTED_EACH)  # the api that came back accepts too
            stop.set()
            await asyncio.gather(*posting)
            await client.store.wait_many(accepted, since_id, timeout_s=180)
            records = [await client.status(job_id) for job_id in accepted]
            outcome = Outcome(records, set(double_work(await read_all_events(client.store, since_id), set())))
    finally:
        if api.process is not None and api.process.poll() is None:
            api.process.kill()
            api.process.wait()
        await client.close()
    assert cut, "no request was in flight at a kill: the test proved nothing"
    assert len(accepted) >= 3 * ACCEPTED_EACH, accepted
    print(f"api kill -9 x2: accepted={len(accepted)} cut={len(cut)} {outcome}")
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == len(accepted), str(outcome)


async def wait_healthy(base: str, timeout_s: float = 60.0) -> None:
    give_up_at = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        while time.monotonic() < give_up_at:
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the api did not come back within {timeout_s} s")
