"""Signed image URLs between api replicas, and the queries anybody may send without a key (issue 29).

Two api replicas serve one namespace (a third starts where a failover is played); a stand-in worker
ends each job as `done` with a PNG, so URLs are minted the way clients get them, by
`POST /v1/images/generations` with `response_format: "url"`. Rotation, revocation of every URL and
revocation of a key go through the `hadis api-key` command, as an operator's would. The cache bound
here is HADIS_API_KEY_CACHE_S = CACHE_S (the URL secrets are read at most min(5 s, it) before)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
import pytest_asyncio
from PIL import Image

from shared import apikeys, urlsigning
from shared.bus import Bus
from shared.schemas import JobState
from shared.store import Store
from tests.helpers import make_settings
from tests.stack import running_api

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CACHE_S = 0.5
SETTLE_S = CACHE_S + 0.7  # past the bound, with room for a busy machine
READ_RATE = 5.0  # a tenant's reads per second per replica (burst twice that)
SETTINGS = make_settings(api_key_cache_s=CACHE_S, api_read_rate_per_s=READ_RATE)
HADIS = str(Path(sys.executable).with_name("hadis"))


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(out, format="PNG")
    return out.getvalue()


async def stand_in_worker(store: Store, stopping: asyncio.Event) -> None:
    """Ends every job the api records `queued` as `done`, with a PNG (no router or GPU needed). It
    stops on a flag, not a cancel: a cancel that lands in the client's blocking read can be absorbed
    and leave the task pending for ever (shared/events.py stops its reader the same way)."""
    image, last = png(), "0-0"
    while not stopping.is_set():
        for event_id, event in await store.read_events(last, block_ms=100):
            last = event_id
            if event.get("state") == JobState.queued.value:
                await store.transition(event["job_id"], JobState.done, image=image)


class Replicas:
    def __init__(self, store: Store, bases: list[str]) -> None:
        self.store, self.bases = store, bases

    async def key(self, tenant: str) -> tuple[str, str]:
        """A new key of the tenant: (the key, its id)."""
        key, stored = apikeys.new_key(tenant)
        await self.store.put_api_key(stored)
        return key, stored.key_id

    async def mint(self, base: str, key: str) -> str:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            response = await http.post("/v1/images/generations", json={"prompt": "a lighthouse", "size": "64x64",
                                                                         "response_format": "url"})
        assert response.status_code == 200, response.text
        url = response.json()["data"][0]["url"]
        assert url.startswith(base), url
        return url


async def fetch(url: str, base: str, key: str | None = None) -> httpx.Response:
    """GET the URL's path and query (kept byte for byte) from the replica at base, without a key
    unless one is given."""
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        return await http.get(f"{base}{parts.path}?{parts.query}")


async def hadis(*args: str) -> dict:
    process = await asyncio.create_subprocess_exec(
        HADIS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HADIS_NAMESPACE": SETTINGS.namespace, "HADIS_LOG_LEVEL": "warning"})
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return orjson.loads(out)


def assert_ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.content.startswith(b"\x89PNG")


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"message": response.json()["error"]["message"], "type":
                                         "invalid_request_error", "param": None, "code": code}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas():
    store, stopping = await Store.connect(SETTINGS), asyncio.Event()
    worker = asyncio.create_task(stand_in_worker(store, stopping))
    try:
        async with running_api(SETTINGS) as first, running_api(SETTINGS) as second:
            yield Replicas(store, [first, second])
    finally:
        stopping.set()
        await asyncio.wait({worker}, timeout=10)
        worker.cancel()
        bus = await Bus.connect(SETTINGS)
        await bus.delete_namespace()
        await bus.close()
        await store.delete_namespace()
        await store.close()


async def test_a_url_is_bound_to_its_key_and_verifies_on_every_replica(replicas):
    key, key_id = await replicas.key("bound")
    _, other_id = await replicas.key("bound")
    first, second = replicas.bases
    url = await replicas.mint(first, key)
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"expires", "key_id", "signature"} and query["key_id"] == [key_id]
    assert abs(int(query["expires"][0]) - (time.time() + replicas.store.image_ttl)) < 60
    for base in replicas.bases:
        assert_ok(await fetch(url, base))
    assert_ok(await fetch(await replicas.mint(second, key), first))

    signature = query["signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    other_job = urlsplit(await replicas.mint(first, key)).path
    for forged in (url.replace(signature, flipped), url.replace(key_id, other_id),
                   url.replace(urlsplit(url).path, other_job)):
        for base in replicas.bases:
            assert_refused(await fetch(forged, base), 401, "invalid_signature")
    # A caller with its key is judged by its key, whatever the query says.
    assert_ok(await fetch(url.replace(signature, flipped), first, key))

    secret = (await replicas.store.url_secrets()).current
    job_id = urlsplit(url).path.split("/")[3]
    expired = f"{first}/v1/jobs/{job_id}/image?{urlsigning.query(secret, job_id, int(time.time()) - 1, key_id)}"
    assert_refused(await fetch(expired, second), 403, "url_expired")


def hostile_queries(job_id: str, key_id: str, genuine: str) -> list[str]:
    expires, good = str(int(time.time()) + 3600), "0" * 64
    return [
        "expires=99999999999&signature=%C3%A9",  # issue 29's: compare_digest raised on "é"
        f"expires=99999999999&key_id={key_id}&signature=%C3%A9",
        f"expires=%C2%B2&key_id={key_id}&signature={good}",  # "²".isdigit() is True, int() raised
        f"expires={'9' * 5000}&key_id={key_id}&signature={good}",  # past Python's int digit limit
        f"expires={'9' * 13}&key_id={key_id}&signature={good}",
        f"expires=-1&key_id={key_id}&signature={good}",
        f"expires=%EF%BC%91&key_id={key_id}&signature={good}",  # a fullwidth 1
        f"expires={expires}&key_id={key_id}&signature=%FF%FE",  # not UTF-8
        f"expires={expires}&key_id={key_id}&signature={genuine.upper()}",
        f"expires={expires}&key_id={key_id}&signature={good}0",
        f"expires={expires}&key_id={key_id}&signature={good}&signature={genuine}",
        f"expires={expires}&key_id=..%2F..%2Fkey&signature={good}",
        f"expires={expires}&key_id={key_id}%00&signature={good}",
        f"expires={expires}&signature={good}",
        "expires=&key_id=&signature=",
        f"expires={expires}&key_id={key_id}&signature={good}",  # well formed, wrong
    ]


async def test_hostile_queries_are_clean_401s_never_500(replicas):
    key, key_id = await replicas.key("probe")
    url = await replicas.mint(replicas.bases[0], key)
    job_id = urlsplit(url).path.split("/")[3]
    genuine = parse_qs(urlsplit(url).query)["signature"][0]
    for query in hostile_queries(job_id, key_id, genuine):
        for base in replicas.bases:
            response = await fetch(f"http://x/v1/jobs/{job_id}/image?{query}", base)
            assert_refused(response, 401, "invalid_signature")
            assert "Traceback" not in response.text and "é" not in response.text
    unknown = f"http://x/v1/jobs/{'a' * 32}/image?expires=1&key_id={key_id}&signature={genuine}"
    assert_refused(await fetch(unknown, replicas.bases[0]), 401, "invalid_signature")


async def test_a_urls_fetches_count_as_its_tenants_reads_and_forgeries_cost_nothing(replicas):
    key, key_id = await replicas.key("reader")
    first = replicas.bases[0]
    url = await replicas.mint(first, key)
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    forged = url.replace(signature, "0" * 64)
    for _ in range(100):  # refused before any budget or store read
        assert_refused(await fetch(forged, first), 401, "invalid_signature")
    # At once, so a slow machine cannot refill the bucket between them: the burst (twice the rate) passes.
    responses = await asyncio.gather(*(fetch(url, first) for _ in range(int(8 * READ_RATE))))
    codes = [response.status_code for response in responses]
    assert codes.count(200) >= int(2 * READ_RATE), codes
    assert 429 in codes and set(codes) == {200, 429}, codes
    # A refusal of the burst itself, not one more fetch after it: CI's slowest minutes refilled a token
    # between the burst and a fetch made after it, which then passed.
    limited = next(response for response in responses if response.status_code == 429)
    assert limited.json()["error"]["code"] == "read_rate_exceeded"


async def test_rotation_keeps_urls_in_flight_for_the_grace_on_every_replica(replicas):
    key, _ = await replicas.key("rotate")
    first, second = replicas.bases
    old = await replicas.mint(first, key)
    assert (await hadis("api-key", "rotate-url-secret", "--grace", "60"))["previous_valid_s"] == 60
    await asyncio.sleep(SETTLE_S)
    new = [await replicas.mint(first, key), await replicas.mint(second, key)]
    stored = await replicas.store.url_secrets()
    for url in new:  # both replicas sign with the new secret
        query = parse_qs(urlsplit(url).query)
        job_id = urlsplit(url).path.split("/")[3]
        assert query["signature"] == [urlsigning.sign(stored.current, job_id, int(query["expires"][0]),
                                                      query["key_id"][0])]
    for url in (old, *new):
        for base in replicas.bases:
            assert_ok(await fetch(url, base))

    await hadis("api-key", "rotate-url-secret", "--grace", "0.2")
    await asyncio.sleep(SETTLE_S)  # past the grace and the cache: only the newest secret verifies
    for url in (old, *new):
        for base in replicas.bases:
            assert_refused(await fetch(url, base), 401, "invalid_signature")
    fresh = await replicas.mint(second, key)
    for base in replicas.bases:
        assert_ok(await fetch(fresh, base))


async def test_revoke_urls_refuses_every_url_on_every_replica_within_the_bound(replicas):
    key, _ = await replicas.key("revoke-all")
    first, second = replicas.bases
    urls = [await replicas.mint(first, key), await replicas.mint(second, key)]
    for url in urls:
        for base in replicas.bases:
            assert_ok(await fetch(url, base))
    await hadis("api-key", "revoke-urls")
    await asyncio.sleep(SETTLE_S)
    for url in urls:
        for base in replicas.bases:
            assert_refused(await fetch(url, base), 401, "invalid_signature")
    # Both replicas converge on the one new secret the first of them made.
    fresh = [await replicas.mint(first, key), await replicas.mint(second, key)]
    for url in fresh:
        for base in replicas.bases:
            assert_ok(await fetch(url, base))


async def test_revoking_a_key_revokes_its_urls_on_every_replica_within_the_bound(replicas):
    revoked, revoked_id = await replicas.key("leaky")
    kept, _ = await replicas.key("leaky")
    first, second = replicas.bases
    leaked, other = await replicas.mint(first, revoked), await replicas.mint(second, kept)
    for base in replicas.bases:  # each replica has the key cached now
        assert_ok(await fetch(leaked, base))
    assert (await hadis("api-key", "revoke", revoked_id))["revoked"] is True
    await asyncio.sleep(SETTLE_S)
    for base in replicas.bases:
        assert_refused(await fetch(leaked, base), 403, "url_revoked")
        assert_ok(await fetch(other, base))


async def test_a_replica_started_after_the_secret_was_lost_agrees_with_the_others(replicas):
    key, _ = await replicas.key("failover")
    first, second = replicas.bases
    before = await replicas.mint(first, key)
    # What a failover to a Redis replica that never got the secret looks like: the key is gone.
    await replicas.store._redis.delete(*(f"{SETTINGS.namespace}:api:url-secret{tail}" for tail in ("", ":prev")))
    async with running_api(SETTINGS) as third:  # makes a new secret at start
        await asyncio.sleep(SETTLE_S)
        everyone = [first, second, third]
        for url in [await replicas.mint(base, key) for base in (third, first, second)]:
            for base in everyone:
                assert_ok(await fetch(url, base))
        for base in everyone:
            assert_refused(await fetch(before, base), 401, "invalid_signature")
