"""The HTTP api alone (nothing consumes its queue), fed what clients get wrong and what hostile
ones send: every refusal is a clear OpenAI-shaped error, and nothing refused is ever published."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import apikeys
from shared.bus import Bus
from shared.policies.tenancy import Limits
from shared.schemas import JobState
from shared.store import Store
from tests.helpers import make_settings
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SETTINGS = make_settings(api_body_timeout_s=1.0, api_max_body_bytes=4096, api_max_header_bytes=4096)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api():
    async with running_api(SETTINGS) as base:
        bus, store = await Bus.connect(SETTINGS), await Store.connect(SETTINGS)
        key, stored = apikeys.new_key("tester")
        await store.put_api_key(stored)
        await store.set_tenant_limits("tester", Limits(rate=10_000, burst=10_000, max_active=100_000))
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            yield http, bus, store
        await bus.delete_namespace()
        await store.delete_namespace()
        await bus.close()
        await store.close()


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


async def published(bus: Bus) -> int:
    return await bus.depth(bus.queues.requests)


GOOD = {"prompt": "a red bicycle", "width": 64, "height": 64}

BAD_JOBS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "bell \x07"}, "prompt"),
    ({**GOOD, "width": 65}, "width"),
    ({**GOOD, "height": 4096}, "height"),
    ({**GOOD, "slo_s": -1}, "slo_s"),
    ({**GOOD, "seed": 2**40}, "seed"),
    ({**GOOD, "colour": "red"}, "colour"),
    ({**GOOD, "job_id": "mine"}, "job_id"),
    ({**GOOD, "tenant": "someone-else"}, "tenant"),
    ({**GOOD, "metadata": {f"k{i}": i for i in range(40)}}, "metadata"),
    ({**GOOD, "submitted_at": 1e308}, "submitted_at"),
    ({**GOOD, "priority": "urgent"}, "priority"),
    ({**GOOD, "priority": None}, "priority"),
]


@pytest.mark.parametrize("body, param", BAD_JOBS, ids=[param for _, param in BAD_JOBS])
async def test_bad_jobs_are_400_and_never_published(api, body, param):
    http, bus, _ = api
    assert_error(await http.post("/v1/jobs", json=body), 400, param=param)
    assert await published(bus) == 0


BAD_IMAGES = [
    ({"prompt": "a cat", "size": "1024"}, 400, "size"),
    ({"prompt": "a cat", "size": "64x4096"}, 400, "size"),
    ({"prompt": "a cat", "n": 0}, 400, "n"),
    ({"prompt": "a cat", "n": 11}, 400, "n"),
    ({"prompt": "a cat", "response_format": "jpeg"}, 400, "response_format"),
    ({"prompt": "a cat", "output_format": "gif"}, 400, "output_format"),
    ({"prompt": "a cat", "stream": True, "n": 2}, 400, "n"),
    ({"prompt": "a cat", "stream": True, "response_format": "url"}, 400, "response_format"),
    ({"prompt": "a cat", "stream": True, "partial_images": 4}, 400, "partial_images"),
    ({"prompt": "a cat", "background": "transparent"}, 400, "background"),
    ({"prompt": "a cat", "bogus": 1}, 400, "bogus"),
    ({"prompt": "a cat", "priority": "urgent"}, 400, "priority"),
    ({"prompt": "a cat", "priority": ["batch"]}, 400, "priority"),
    ({"prompt": "a cat", "stream": True, "priority": "batch"}, 400, "priority"),
    ({"prompt": "a cat", "model": "sdxl"}, 404, "model"),
    ({"prompt": ""}, 400, "prompt"),
    ({"n": 1}, 400, "prompt"),
]


@pytest.mark.parametrize("body, status, param", BAD_IMAGES, ids=[f"{p}-{s}" for _, s, p in BAD_IMAGES])
async def test_bad_images_requests_are_refused_before_publishing(api, body, status, param):
    http, bus, _ = api
    assert_error(await http.post("/v1/images/generations", json=body), status, param=param)
    assert await published(bus) == 0


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/images/generations"])
async def test_bodies_that_are_not_a_job(api, path):
    http, bus, _ = api
    assert_error(await http.post(path, content=b"{not json", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(await http.post(path, content=b"NaN", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(await http.post(path, json=[1, 2]), 400)
    assert_error(await http.post(path, content=b"prompt=x", headers={"content-type": "text/plain"}),
                 415, "unsupported_media_type")
    assert_error(await http.post(path, json={"prompt": "x" * 5000}), 413, "body_too_large")
    assert await published(bus) == 0


async def test_keys_are_checked_before_anything_else(api):
    http, bus, _ = api
    base = str(http.base_url)
    async with httpx.AsyncClient(base_url=base) as anonymous:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"},
                        {"Authorization": "Bearer hds_000000000000_" + "A" * 43},
                        {"Authorization": "Bearer " + "x" * 3000}):
            for method, path in [("POST", "/v1/jobs"), ("POST", "/v1/images/generations"),
                                 ("GET", "/v1/jobs/abc"), ("GET", "/v1/models"), ("DELETE", "/v1/jobs/abc")]:
                response = await anonymous.request(method, path, json=GOOD, headers=headers)
                assert_error(response, 401, "invalid_api_key")
    assert await published(bus) == 0


async def test_routes_and_ids_that_do_not_exist(api):
    http, _, _ = api
    assert_error(await http.get("/v2/anything"), 404, "not_found")
    assert_error(await http.put("/v1/jobs"), 405, "method_not_allowed")
    for job_id in ["nope", "a:b", "x" * 129, "%00", "..%2F..%2Fetc", "caf%C3%A9", "a%20b"]:
        for suffix in ("", "/image", "/events"):
            assert_error(await http.get(f"/v1/jobs/{job_id}{suffix}"), 404)


async def test_bad_idempotency_keys(api):
    http, bus, _ = api
    assert_error(await http.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "k" * 256}), 400,
                 param="Idempotency-Key")
    assert_error(await http.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "a\x7fb"}), 400,
                 param="Idempotency-Key")
    assert await published(bus) == 0


async def test_oversized_headers_are_refused_by_the_server(api):
    http, _, _ = api
    response = await http.get("/v1/models", headers={"X-Padding": "p" * 8000})
    assert_error(response, 431, "headers_too_large")


async def test_a_slow_body_is_a_408(api):
    http, bus, _ = api

    async def trickle():
        yield b'{"prompt": '
        await asyncio.sleep(2.0)  # longer than HADIS_API_BODY_TIMEOUT_S (1 s here)
        yield b'"late"}'

    response = await http.post("/v1/jobs", content=trickle(), headers={"content-type": "application/json"})
    assert_error(response, 408, "body_timeout")
    assert await published(bus) == 0


async def test_openapi_schema_and_its_page(api):
    http, _, _ = api
    schema = (await http.get("/openapi.json")).json()
    for path in ("/v1/images/generations", "/v1/models", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/jobs/{job_id}/image", "/v1/jobs/{job_id}/events"):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in body["properties"] and "prompt" in body["required"]
    page = await http.get("/docs")
    assert page.status_code == 200 and "openapi.json" in page.text


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON_VALUES = st.recursive(SCALARS,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
BODIES = st.one_of(JSON_VALUES, st.fixed_dictionaries({"prompt": st.text(max_size=50)},
                                                      optional={"width": JSON_VALUES, "slo_s": JSON_VALUES,
                                                                "n": JSON_VALUES, "size": JSON_VALUES,
                                                                "metadata": JSON_VALUES, "seed": JSON_VALUES}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/v1/jobs", "/v1/images/generations"]))
async def test_drawn_bodies_never_get_a_500(api, body, path):
    http, _, _ = api
    try:
        response = await asyncio.wait_for(http.post(path, json=body), 0.5 if path != "/v1/jobs" else 10)
    except TimeoutError:  # a valid images request waits for its job: nothing consumes here
        return
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        assert_error(response, response.status_code)


async def test_a_queued_job_is_cancelled_and_never_generated(api):
    http, bus, store = api
    before = await published(bus)
    job_id = (await http.post("/v1/jobs", json=GOOD)).json()["id"]
    assert (await http.get(f"/v1/jobs/{job_id}")).json()["state"] == "queued"
    cancelled = await http.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["error"] is None
    assert_error(await http.delete(f"/v1/jobs/{job_id}"), 409, "not_cancellable")
    assert await published(bus) == before + 1  # published before it was cancelled; the router must drop it
    # Now the services come up and drain the queue: the cancelled job stays cancelled, ungenerated.
    async with running_stack(SETTINGS, services=("router", "light", "heavy", "judge")) as stack:
        give_up_at = asyncio.get_running_loop().time() + 30
        while await published(stack.bus):
            assert asyncio.get_running_loop().time() < give_up_at
            await asyncio.sleep(0.1)
        record = await store.get(job_id)
        assert record is not None and record.state is JobState.cancelled
        assert [t.state for t in record.history] == [JobState.queued, JobState.cancelled]
        assert await store.get_image(job_id) is None
