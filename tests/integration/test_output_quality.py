"""Output formats and quality through the real services (router, light and heavy workers on emulated
GPUs, the judge, real RabbitMQ and Redis) and the HTTP api, spoken to with httpx and the official
`openai` package: a job's image is encoded once in its format and served with its media type;
quality=low is never escalated, quality=high goes straight to heavy or is refused with 503."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import openai
import pytest
import pytest_asyncio
from PIL import Image

from shared import apikeys
from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.integration.test_api import submit, wait_done
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# sd35-large-turbo 0.13 s a job, sd35-large 2.7 s (emulated); d = 1: the judge escalates every auto job.
SETTINGS = dict(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", slo_s=30.0,
                plan_light_model="sd35-large-turbo", plan_heavy_model="sd35-large", plan_light_batch=1,
                plan_heavy_batch=1, plan_r=0.0, plan_d=1.0, batch_wait_ms=5)
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Deployment:
    def __init__(self, stack, base: str, key: str) -> None:
        self.stack, self.base, self.key = stack, base, key

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=self.key, max_retries=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment():
    settings = make_settings(**SETTINGS)
    async with running_stack(settings, services=("router", "light", "heavy", "judge")) as stack, \
            running_api(settings) as base:
        key, stored = apikeys.new_key("formats")
        await stack.store.put_api_key(stored)
        yield Deployment(stack, base, key)


def opened(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format


def states(record: dict) -> list[str]:
    return [step["state"] for step in record["history"]]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_a_job_is_served_in_its_output_format(deployment, fmt):
    async with deployment.http() as http:
        job_id = await submit(http, output_format=fmt, output_compression=40, quality="low")
        record = await wait_done(http, job_id)
        assert record["state"] == "done" and record["output_format"] == fmt, record
        response = await http.get(f"/v1/jobs/{job_id}/image")
        assert response.status_code == 200
        assert response.headers["content-type"] == f"image/{fmt}"
        assert opened(response.content) == PIL_FORMATS[fmt]
        etag = response.headers["etag"]
        assert fmt in etag
        again = await http.get(f"/v1/jobs/{job_id}/image", headers={"If-None-Match": etag})
        assert again.status_code == 304


async def test_the_judge_reads_a_light_image_in_any_format(deployment):
    """Auto jobs with d = 1: the judge decodes each light image (jpeg, webp) and escalates it; the
    heavy worker's image is in the job's format too."""
    async with deployment.http() as http:
        job_ids = [await submit(http, output_format=fmt) for fmt in ("jpeg", "webp")]
        for job_id, fmt in zip(job_ids, ("jpeg", "webp"), strict=True):
            record = await wait_done(http, job_id)
            assert record["state"] == "done" and record["escalated"] and record["tier"] == "heavy", record
            assert record["judge_score"] is not None
            image = (await http.get(f"/v1/jobs/{job_id}/image")).content
            assert opened(image) == PIL_FORMATS[fmt]


async def test_the_openai_route_follows_the_format(deployment):
    client = deployment.openai()
    result = await client.images.generate(prompt="a lighthouse", size="64x64", output_format="webp",
                                          output_compression=50, quality="low", response_format="b64_json")
    assert result.output_format == "webp"
    assert opened(base64.b64decode(result.data[0].b64_json)) == "WEBP"
    linked = await client.images.generate(prompt="a lighthouse", size="64x64", output_format="jpeg",
                                          quality="low", response_format="url")
    async with httpx.AsyncClient() as anonymous:
        response = await anonymous.get(linked.data[0].url)
    assert response.headers["content-type"] == "image/jpeg" and opened(response.content) == "JPEG"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.generate(prompt="a lighthouse", size="64x64", quality="ultra")  # type: ignore[arg-type]
    assert refused.value.body["param"] == "quality"


async def test_quality_low_is_never_escalated_even_when_d_is_1(deployment):
    async with deployment.http() as http:
        low = [await submit(http, quality="low", prompt=f"a quiet harbour, take {i}") for i in range(4)]
        auto = await submit(http, prompt="a quiet harbour, the cascade")
        for job_id in low:
            record = await wait_done(http, job_id)
            assert record["state"] == "done" and record["tier"] == "light" and not record["escalated"], record
            assert "escalated" not in states(record) and record["judge_score"] is None  # not scored
            assert record["quality"] == "low" and record["model"] == "sd35-large-turbo"
        cascade = await wait_done(http, auto)
        assert cascade["escalated"] and "escalated" in states(cascade)  # d = 1 does escalate an auto job
    assert (await deployment.stack.store.forced_arrivals()).get("low", 0) >= 4  # the controller's mix


async def test_quality_high_goes_straight_to_heavy(deployment):
    async with deployment.http() as http:
        job_id = await submit(http, quality="high")
        record = await wait_done(http, job_id)
    assert record["state"] == "done" and record["tier"] == "heavy" and record["model"] == "sd35-large", record
    assert "judging" not in states(record) and record["router_score"] is None
    client = deployment.openai()
    result = await client.images.generate(prompt="a lighthouse", size="64x64", quality="hd")  # dall-e-3's high
    assert opened(base64.b64decode(result.data[0].b64_json)) == "PNG"


async def test_quality_high_is_refused_when_the_heavy_model_cannot_make_the_deadline(deployment):
    """A 2 s objective: one sd35-large batch takes 2.7 s."""
    async with deployment.http() as http:
        job_id = await submit(http, quality="high", slo_s=2.0)
        record = await wait_done(http, job_id)
    assert record["state"] == "failed" and record["error"].startswith("503 HeavyUnavailable"), record
    assert "cannot finish it by its deadline" in record["error"]
    with pytest.raises(openai.InternalServerError) as refused:
        await deployment.openai().images.generate(prompt="a lighthouse", size="64x64", quality="high",
                                                  model="hadis-2s")
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "heavy_unavailable" and refused.value.body["param"] == "quality"


async def test_quality_high_is_refused_by_a_plan_without_heavy_gpus(deployment):
    stack = deployment.stack
    await stack.set_plan(heavy_gpus=0)
    try:
        async with deployment.http() as http:
            job_id = await submit(http, quality="high")
            record = await wait_done(http, job_id)
            assert record["state"] == "failed" and "no heavy GPUs" in record["error"], record
            auto = await wait_done(http, await submit(http, quality="auto", prompt="served all the same"))
            assert auto["state"] == "done"
    finally:
        await stack.set_plan(heavy_gpus=1)


async def test_the_controller_plans_with_the_quality_mix():
    """The router counts the forced arrivals; the controller folds them into the mix and publishes
    their shares with the plan (the static policy keeps the rest of its plan)."""
    settings = make_settings(**{**SETTINGS, "plan_d": 0.0})
    async with running_stack(settings, services=("controller", "router", "light", "heavy", "judge")) as stack:
        await stack.store.register_agent("host-a", ["gpu-a", "gpu-b"], ttl_s=120)  # a fleet to plan for
        jobs = [Job(prompt=f"a lantern, take {i}", quality=quality)
                for i, quality in enumerate(["low"] * 6 + ["high"] * 2 + ["auto"] * 2)]
        await stack.submit_many(jobs)
        records = await stack.wait_all([job.job_id for job in jobs], timeout_s=60)
        assert all(record.state is JobState.done for record in records)
        give_up_at = time.monotonic() + 30
        while (plan := await stack.store.get_plan()) is None or plan.low_share == 0 or plan.high_share == 0:
            assert time.monotonic() < give_up_at, plan
            await asyncio.sleep(0.2)
        assert plan.low_share > plan.high_share > 0 and plan.low_share + plan.high_share <= 1
