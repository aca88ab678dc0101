"""The HTTP api in front of the whole stack (tiny pipelines, real RabbitMQ and Redis), spoken to
the way its users do: the official `openai` package, curl-like httpx calls, an SSE reader."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time

import httpx
import openai
import orjson
import pytest
import pytest_asyncio
from PIL import Image

from shared import apikeys
from shared.policies.tenancy import Limits
from shared.schemas import JobState
from tests.helpers import make_settings
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


class Deployment:
    def __init__(self, stack, base: str) -> None:
        self.stack, self.base = stack, base

    async def key(self, tenant: str, limits: Limits | None = None) -> str:
        key, stored = apikeys.new_key(tenant)
        await self.stack.store.put_api_key(stored)
        if limits is not None:
            await self.stack.store.set_tenant_limits(tenant, limits)
        return key

    def http(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=60)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment():
    settings = make_settings(backend="tiny", judge_backend="clip", profile="tiny-cpu", slo_s=60.0)
    async with running_stack(settings) as stack, running_api(settings) as base:
        yield Deployment(stack, base)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


async def submit(http: httpx.AsyncClient, **job) -> str:
    response = await http.post("/v1/jobs", json={"prompt": "a red bicycle", "width": 64, "height": 64, **job})
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def wait_done(http: httpx.AsyncClient, job_id: str, timeout_s: float = 60) -> dict:
    give_up_at = time.monotonic() + timeout_s
    while True:
        record = (await http.get(f"/v1/jobs/{job_id}")).json()
        if record["state"] in ("done", "failed", "expired"):
            return record
        assert time.monotonic() < give_up_at, record
        await asyncio.sleep(0.05)


async def test_openai_sdk_gets_a_png_and_its_errors(deployment):
    key = await deployment.key("sdk")
    client = openai.AsyncOpenAI(base_url=f"{deployment.base}/v1", api_key=key, max_retries=0)
    result = await client.images.generate(prompt="a lighthouse at dusk", size="512x512", response_format="b64_json")
    assert png_size(base64.b64decode(result.data[0].b64_json))  # the tiny pipelines draw 64x64 whatever the size

    two = await client.images.generate(prompt="a lighthouse", size="64x64", n=2, model="dall-e-3",
                                       response_format="url")
    async with httpx.AsyncClient() as anonymous:  # a signed URL needs no key, as OpenAI's do
        for image in two.data:
            response = await anonymous.get(image.url)
            assert response.status_code == 200 and png_size(response.content) == (64, 64)
            signature = image.url.rsplit("signature=", 1)[1]
            flipped = signature[:-1] + ("1" if signature.endswith("0") else "0")
            tampered = await anonymous.get(image.url.replace(signature, flipped))
            assert tampered.status_code == 401 and tampered.json()["error"]["code"] == "invalid_signature"

    wrong_key = key[:-1] + ("B" if key.endswith("A") else "A")  # one character off
    wrong = openai.AsyncOpenAI(base_url=f"{deployment.base}/v1", api_key=wrong_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.images.generate(prompt="a cat", size="64x64")
    with pytest.raises(openai.NotFoundError):
        await client.images.generate(prompt="a cat", size="64x64", model="no-such-model")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.generate(prompt="a cat", size="65x64")
    assert refused.value.body["param"] == "size"

    models = await client.models.list()
    assert "hadis" in [model.id for model in models.data]


async def test_over_quota_and_over_rate_are_rate_limit_errors(deployment):
    slow = await deployment.key("slow", Limits(rate=0.01, burst=1, max_active=100))
    client = openai.AsyncOpenAI(base_url=f"{deployment.base}/v1", api_key=slow, max_retries=0)
    await client.images.generate(prompt="one", size="64x64")
    with pytest.raises(openai.RateLimitError) as limited:
        await client.images.generate(prompt="two", size="64x64")
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.body["code"] == "rate_limit_exceeded"

    narrow = await deployment.key("narrow", Limits(rate=1000, burst=1000, max_active=1))
    async with deployment.http(narrow) as http:
        # Nothing consumes these fast enough to end before the second: hold the first with a
        # deadline far off and two jobs at once.
        first = await http.post("/v1/jobs", json={"prompt": "first", "width": 64, "height": 64})
        second = await http.post("/v1/jobs", json={"prompt": "second", "width": 64, "height": 64})
        codes = sorted([first.status_code, second.status_code])
        if codes == [202, 202]:  # the first ended before the second came: its slot was given back
            assert (await http.get(f"/v1/jobs/{first.json()['id']}")).json()["state"] == "done"
        else:
            assert codes == [202, 429]
            refused = second if second.status_code == 429 else first
            assert refused.json()["error"]["code"] == "quota_exceeded" and refused.headers["retry-after"]
        await wait_done(http, first.json()["id"])
        # Once the job has ended its slot is free again.
        assert (await http.post("/v1/jobs", json={"prompt": "third", "width": 64, "height": 64})).status_code == 202


async def test_a_job_is_followed_by_record_image_and_events(deployment):
    key = await deployment.key("follow")
    async with deployment.http(key) as http:
        job_id = await submit(http, metadata={"order": 7})
        events = []
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, orjson.loads(line.removeprefix("data: "))))
        states = [data["state"] for kind, data in events if kind == "state"]
        assert states[0] == "queued" and states[-1] == "done", events
        assert "generating" in states
        times = [data["at"] for _, data in events]
        assert times == sorted(times)

        record = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert record["state"] == "done" and record["tenant"] == "follow" and record["metadata"] == {"order": 7}
        assert "image_key" not in record and record["latency_s"] > 0

        image = await http.get(f"/v1/jobs/{job_id}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert png_size(image.content) == (64, 64)
        again = await http.get(f"/v1/jobs/{job_id}/image", headers={"If-None-Match": image.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        # A stream opened after the end replays the history and ends at once.
        replay = await http.get(f"/v1/jobs/{job_id}/events")
        assert replay.text.count("event: state") == len(states)


async def test_another_tenant_sees_nothing_of_a_job(deployment):
    owner, other = await deployment.key("owner"), await deployment.key("other")
    async with deployment.http(owner) as mine, deployment.http(other) as theirs:
        job_id = await submit(mine)
        await wait_done(mine, job_id)
        for method, path in [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/image"),
                             ("GET", f"/v1/jobs/{job_id}/events"), ("DELETE", f"/v1/jobs/{job_id}")]:
            response = await theirs.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "not_found"
            # The same answer as for an id nobody has: an id tells another tenant nothing.
            unknown = await theirs.request(method, path.replace(job_id, "f" * 32))
            assert unknown.status_code == 404 and unknown.json() == response.json()
        assert (await mine.get(f"/v1/jobs/{job_id}")).json()["state"] == "done"
        record = await deployment.stack.store.get(job_id)
        assert record is not None and record.state is JobState.done


async def test_idempotency_key_gives_one_job(deployment):
    key = await deployment.key("idem")
    async with deployment.http(key) as http:
        body = {"prompt": "a green door", "width": 64, "height": 64}
        first = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        second = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        other_body = await http.post("/v1/jobs", json={**body, "prompt": "a blue door"},
                                     headers={"Idempotency-Key": "order-42"})
        assert other_body.status_code == 400 and other_body.json()["error"]["code"] == "idempotency_key_reused"
        record = await wait_done(http, first.json()["id"])
        assert record["state"] == "done"
        assert [t["state"] for t in record["history"]].count("generating") == 1
    # A key is bound only to a valid body: the client that fixes its body may keep its key.
    async with deployment.http(await deployment.key("idem3")) as http:
        wrong = await http.post("/v1/jobs", json={**body, "width": 65}, headers={"Idempotency-Key": "fix-me"})
        assert wrong.status_code == 400
        fixed = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "fix-me"})
        assert fixed.status_code == 202
    # Keys are per tenant: another tenant's same key is another job.
    async with deployment.http(await deployment.key("idem2")) as http:
        third = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-42"})
        assert third.status_code == 202 and third.json()["id"] != first.json()["id"]


async def test_a_finished_job_cannot_be_cancelled(deployment):
    async with deployment.http(await deployment.key("late-cancel")) as http:
        job_id = await submit(http)
        await wait_done(http, job_id)
        response = await http.delete(f"/v1/jobs/{job_id}")
        assert response.status_code == 409 and response.json()["error"]["code"] == "not_cancellable"


async def test_a_retry_after_a_death_before_the_publish_publishes(deployment):
    """The api bound the key, then died before the broker confirmed (nothing was published, no
    record): the client's retry with the same key must publish the job, not answer 202 for nothing."""
    key = await deployment.key("crashed")
    body = orjson.dumps({"prompt": "a kite", "width": 64, "height": 64})
    digest = hashlib.sha256(b"retry-7").hexdigest()
    bound = await deployment.stack.store.claim_idempotency_key(
        "crashed", digest, f"deadbeef00000000 {hashlib.sha256(body).hexdigest()}")
    assert bound is None
    async with deployment.http(key) as http:
        retry = await http.post("/v1/jobs", content=body,
                                headers={"Idempotency-Key": "retry-7", "content-type": "application/json"})
        assert retry.status_code == 202 and retry.json()["id"] == "deadbeef00000000"
        assert "idempotent-replayed" not in retry.headers
        record = await wait_done(http, "deadbeef00000000")
        assert record["state"] == "done"
