"""Streamed previews through the real services (router, light and heavy workers, the judge, real
RabbitMQ and Redis) and the HTTP api: the official `openai` package streams a generation with
`stream=True, partial_images=2` and gets exactly two partial images, then the image, in the format
asked; an escalated job's previews are its light generation's; the job's own SSE stream carries
`preview` events when asked; a job that asked for none leaves no preview key. On the tiny
diffusers pipelines (a random AutoencoderTiny decodes the previews) and on emulated GPUs."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import orjson
import pytest
import pytest_asyncio
from PIL import Image

from shared import apikeys
from shared.policies.previews import PREVIEW_MAX_SIDE, PREVIEW_TTL_S
from tests.helpers import make_settings
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# Every model of 4 steps (previews after steps 1 and 3 for two, 1, 2 and 3 for three); d = 1: the judge
# escalates every auto job, so an auto job is generated twice (light, then heavy).
TINY = dict(backend="tiny", judge_backend="emulated", profile="tiny-cpu", slo_s=300.0,
            plan_light_model="tiny-sd", plan_heavy_model="tiny-sd35", plan_light_batch=1, plan_heavy_batch=1,
            plan_r=0.0, plan_d=1.0, batch_wait_ms=5)
EMULATED = dict(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=30.0,
                plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large", plan_light_batch=1,
                plan_heavy_batch=1, plan_r=0.0, plan_d=1.0, batch_wait_ms=5)


class Deployment:
    def __init__(self, stack, base: str, key: str) -> None:
        self.stack, self.base, self.key = stack, base, key

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=self.key, max_retries=0, timeout=120)

    async def preview_keys(self, job_id: str) -> list[str]:
        store = self.stack.store
        pattern = store.preview_key(job_id, 0)[:-1] + "*"
        return sorted([key.decode() async for key in store._redis.scan_iter(match=pattern)])


@asynccontextmanager
async def deployed(**settings_fields) -> AsyncIterator[Deployment]:
    settings = make_settings(**settings_fields)
    async with running_stack(settings, services=("router", "light", "heavy", "judge")) as stack, \
            running_api(settings) as base:
        key, stored = apikeys.new_key("previews")
        await stack.store.put_api_key(stored)
        yield Deployment(stack, base, key)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tiny():
    async with deployed(**TINY) as deployment:
        yield deployment


def opened(data: str | bytes) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data) if isinstance(data, str) else data))
    image.load()
    return image


async def streamed(deployment: Deployment, **request) -> list:
    request = {"model": "hadis", **request}
    stream = await deployment.openai().images.generate(prompt="a red bicycle", size="64x64", stream=True, **request)
    return [event async for event in stream]


@pytest.mark.parametrize("fmt, pil", [(None, "PNG"), ("jpeg", "JPEG")])
async def test_the_openai_package_streams_two_partial_images_then_the_image(tiny, fmt, pil):
    started = time.perf_counter()
    events = await streamed(tiny, partial_images=2, quality="low", **({"output_format": fmt} if fmt else {}))
    print(f"\nstream of {fmt or 'png'}: {len(events)} events in {time.perf_counter() - started:.2f} s")
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    for event in events:
        assert event.output_format == (fmt or "png") and event.size == "64x64" and event.quality == "low"
        assert opened(event.b64_json).format == pil
    assert max(opened(events[0].b64_json).size) <= PREVIEW_MAX_SIDE
    assert events[-1].usage.total_tokens == 0
    assert events[0].b64_json != events[1].b64_json != events[2].b64_json


async def test_an_escalated_job_streams_its_light_previews_then_the_heavy_image(tiny):
    events = await streamed(tiny, partial_images=3)  # auto: escalated (d = 1)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:3]] == [0, 1, 2]
    assert opened(events[-1].b64_json).format == "PNG"


async def test_a_stream_without_partial_images_is_the_image_alone(tiny):
    events = await streamed(tiny, quality="low")
    assert [event.type for event in events] == ["image_generation.completed"]


async def test_a_stream_of_several_images_is_refused(tiny):
    with pytest.raises(openai.BadRequestError) as error:
        await streamed(tiny, n=2, partial_images=1)
    assert "n must be 1" in str(error.value)


async def sse_events(http: httpx.AsyncClient, path: str) -> list[tuple[str, dict]]:
    events, name = [], ""
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, orjson.loads(line[len("data: "):])))
    return events


async def follow_job(deployment: Deployment, **job) -> tuple[str, list[tuple[str, dict]]]:
    async with deployment.http() as http:
        response = await http.post("/v1/jobs", json={"prompt": "a red bicycle", "width": 64, "height": 64,
                                                     "quality": "low", **job})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        return job_id, await sse_events(http, f"/v1/jobs/{job_id}/events?previews=1")


async def test_the_job_stream_sends_previews_and_stores_them_briefly(tiny):
    job_id, events = await follow_job(tiny, partial_images=3)
    previews = [data for name, data in events if name == "preview"]
    assert [(p["index"], p["step"], p["steps"]) for p in previews] == [(0, 1, 4), (1, 2, 4), (2, 3, 4)]
    assert all(opened(p["b64_json"]).format == "PNG" for p in previews)
    assert events[-1][1]["state"] == "done"
    keys = await tiny.preview_keys(job_id)
    assert len(keys) == 3
    stored = await tiny.stack.store.get_previews(job_id, [0, 1, 2])
    assert all([0 < await tiny.stack.store._redis.ttl(key) <= PREVIEW_TTL_S for key in keys])
    print(f"\npreviews in the store: {[len(data) for data in stored]} bytes (64x64 png)")


async def test_a_job_without_partial_images_leaves_no_preview(tiny):
    job_id, events = await follow_job(tiny)
    assert events[-1][1]["state"] == "done"
    assert not [name for name, _ in events if name == "preview"]
    assert await tiny.preview_keys(job_id) == []


async def test_the_emulated_gpus_make_placeholder_previews_through_the_services():
    async with deployed(**EMULATED) as emulated:
        events = await streamed(emulated, partial_images=2, quality="low", output_format="webp")
        assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
            "image_generation.completed"]
        assert all(opened(event.b64_json).format == "WEBP" for event in events)
        job_id, job_events = await follow_job(emulated, partial_images=1)
        assert [(data["index"], data["step"]) for name, data in job_events if name == "preview"] == [(0, 2)]
        assert len(await emulated.preview_keys(job_id)) == 1
        # a job that ends without an image ends its stream with OpenAI's error event, which the package raises:
        # quality=high in 1 s, where the heavy model takes 2.7 s, is refused by the router (503)
        with pytest.raises(openai.APIError) as error:
            await streamed(emulated, partial_images=2, quality="high", model="hadis-1s")
        assert "HeavyUnavailable" in str(error.value)
