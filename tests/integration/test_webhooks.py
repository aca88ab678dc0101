"""Webhooks against the real pieces: the transition script makes each delivery in Redis, the sender
(services/webhooks.py, in this process) POSTs it to a real HTTP receiver on 127.0.0.1, and the
receiver checks it with the Standard Webhooks algorithm, written here from the specification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest

from shared import apikeys
from shared.schemas import Job, JobState
from shared.settings import Settings
from shared.store import Store
from tests.helpers import make_settings, namespace
from tests.stack import running_api, running_stack, running_webhooks
from tests.webhook_receiver import Received, Script, receiving

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FAST = dict(webhook_allow_networks="127.0.0.1/32", webhook_retry_first_s=0.2, webhook_retry_jitter=0.0,
            webhook_timeout_s=2.0, webhook_connect_timeout_s=1.0, webhook_poll_s=0.05)


def fast_settings(**overrides) -> Settings:
    return make_settings(**{**FAST, **overrides})


@asynccontextmanager
async def store_of(settings: Settings) -> AsyncIterator[Store]:
    """The namespace's store; its keys, and the queues the sender's connection declares, go after."""
    async with namespace(settings) as (_, store):
        yield store


async def ended_job(store: Store, url: str, state: JobState = JobState.failed, tenant: str | None = None) -> str:
    """A job recorded with a webhook URL, then made terminal: the store's own path to a delivery."""
    job = Job(prompt="a lighthouse at dusk", webhook_url=url, tenant=tenant)
    assert await store.create(job.job_id, JobState.queued, **job.record_fields(job.submitted_at + 60))
    assert await store.fail(job.job_id, state, "422 InvalidJob: for the test")
    return job.job_id


async def delivery_state(store: Store, job_id: str, states: tuple[str, ...], timeout_s: float = 30.0) -> dict:
    give_up_at = time.monotonic() + timeout_s
    while True:
        status = await store.webhook_status(job_id)
        if status is not None and status["state"] in states:
            return status
        assert time.monotonic() < give_up_at, f"delivery {status} not in {states} within {timeout_s} s"
        await asyncio.sleep(0.05)


def verify(secret: str, request: Received, tolerance_s: float = 300.0) -> dict:
    """The Standard Webhooks check, from the specification: the key is the base64 after `whsec_`; the
    signed content `{webhook-id}.{webhook-timestamp}.{body}`; HMAC-SHA256, base64; any one of the
    space-separated `v1,<signature>` may match; the timestamp within the tolerance."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) < tolerance_s
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()
    signatures = [part.split(",", 1) for part in request.headers["webhook-signature"].split(" ")]
    assert any(version == "v1" and hmac.compare_digest(base64.b64decode(value), expected)
               for version, value in signatures), "no signature verifies"
    return orjson.loads(request.body)


async def test_a_done_job_through_the_services_is_delivered_once_and_signed() -> None:
    settings = fast_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10", time_scale=0.1)
    with receiving() as receiver:
        async with running_stack(settings, services=("router", "judge", "light", "heavy")) as stack, \
                running_webhooks(settings):
            job = Job(prompt="a red bicycle against a blue wall", webhook_url=receiver.url())
            await stack.client.submit(job)
            record = await stack.client.wait(job.job_id, 60)
            assert record is not None and record.state is JobState.done
            [request] = await receiver.wait_for(1)
            status = await delivery_state(stack.store, job.job_id, ("delivered",))
            secret = (await stack.store.webhook_secrets(None))[0]
            await asyncio.sleep(0.5)  # nothing more comes
            assert len(receiver.received) == 1
    event = verify(secret, request)
    assert request.path == "/hook" and request.headers["content-type"] == "application/json"
    assert event["type"] == "job.done" and event["data"]["job_id"] == job.job_id
    assert event["data"]["state"] == "done" and event["data"]["image_url"] == f"/v1/jobs/{job.job_id}/image"
    assert "image_key" not in event["data"] and len(request.body) < 16_384  # no image in it
    assert request.headers["webhook-id"] == f"job.done.{job.job_id}"
    assert status["attempts"] == 1 and status["last_status"] == 200 and status["next_attempt_at"] is None
    latency = request.at - record.history[-1].at
    print(f"delivered {latency * 1000:.0f} ms after done")
    assert 0 <= latency < 5.0  # a poll (0.05 s here) and an attempt; generous for a loaded machine


async def test_a_receiver_failing_twice_gets_one_success_on_the_third_attempt() -> None:
    settings = fast_settings()
    with receiving(Script(statuses=[500, 500])) as receiver:
        async with store_of(settings) as store, running_webhooks(settings):
            job_id = await ended_job(store, receiver.url(), tenant="acme")
            status = await delivery_state(store, job_id, ("delivered", "failed"))
            secret = (await store.webhook_secrets("acme"))[0]
            await asyncio.sleep(0.5)
    assert status["state"] == "delivered" and status["attempts"] == 3 and status["last_status"] == 200
    assert [item.status for item in receiver.received] == [500, 500, 200]
    assert len(receiver.answered(200)) == 1
    ids = {item.headers["webhook-id"] for item in receiver.received}
    assert ids == {f"job.failed.{job_id}"}  # one event, the same id on every attempt
    for item in receiver.received:
        assert verify(secret, item)["type"] == "job.failed"
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # backoff: 0.2 s, then 0.4 s


async def test_a_private_address_is_refused_unless_allowed() -> None:
    settings = fast_settings(webhook_allow_networks="")
    with receiving() as receiver:
        async with store_of(settings) as store, running_webhooks(settings):
            job_id = await ended_job(store, receiver.url())
            localhost = await ended_job(store, f"http://localhost:{receiver.port}/hook")
            status = await delivery_state(store, job_id, ("delivered", "failed"))
            by_name = await delivery_state(store, localhost, ("delivered", "failed"))
    assert status["state"] == "failed" and status["attempts"] == 1 and "loopback" in status["last_error"]
    assert by_name["state"] == "failed" and "loopback" in by_name["last_error"]
    assert receiver.received == []


async def test_a_slow_receiver_times_out_and_is_tried_again() -> None:
    settings = fast_settings(webhook_timeout_s=1.0, webhook_retry_first_s=30.0)
    with receiving(Script(delay_s=4.0)) as receiver:
        async with store_of(settings) as store, running_webhooks(settings):
            job_id = await ended_job(store, receiver.url())
            started = time.monotonic()
            status = await delivery_state(store, job_id, ("pending",), timeout_s=10)
            while status["attempts"] < 1:
                status = await delivery_state(store, job_id, ("pending",), timeout_s=10)
            took = time.monotonic() - started
    assert status["last_error"] == "no answer within 1 s" and status["last_status"] is None
    assert took < 3.9 and status["next_attempt_at"] > time.time() + 20  # before the receiver's answer (4 s)
    assert len(receiver.received) == 1


async def test_a_huge_answer_is_not_read_beyond_the_bound() -> None:
    settings = fast_settings()
    size = 200 * 2**20
    with receiving(Script(body_bytes=size)) as receiver:
        async with store_of(settings) as store, running_webhooks(settings):
            job_id = await ended_job(store, receiver.url())
            started = time.monotonic()
            status = await delivery_state(store, job_id, ("delivered", "failed"))
            took = time.monotonic() - started
            await asyncio.sleep(0.5)
    assert status["state"] == "delivered" and took < 10.0
    assert receiver.body_written < 32 * 2**20  # what the sockets' buffers took, not 200 MiB


async def test_a_redirect_is_not_followed() -> None:
    settings = fast_settings(webhook_max_attempts=1)
    script = Script(statuses=[307], headers={"location": "/elsewhere"})
    with receiving(script) as receiver:
        async with store_of(settings) as store, running_webhooks(settings):
            job_id = await ended_job(store, receiver.url())
            status = await delivery_state(store, job_id, ("delivered", "failed"))
    assert status["state"] == "failed" and status["last_status"] == 307
    assert [item.path for item in receiver.received] == ["/hook"]


async def test_the_api_applies_the_tenants_default_and_shows_the_delivery() -> None:
    settings = fast_settings()
    with receiving() as receiver:
        async with store_of(settings) as store, running_api(settings) as base, running_webhooks(settings):
            key, stored = apikeys.new_key("acme")
            await store.put_api_key(stored)
            await store.set_tenant_webhook_url("acme", receiver.url("/default"))
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
                own = await http.post("/v1/jobs", json={"prompt": "a cat", "webhook_url": receiver.url("/own")})
                default = await http.post("/v1/jobs", json={"prompt": "a dog"})
                refused = await http.post("/v1/jobs", json={"prompt": "a cow", "webhook_url": "ftp://x.example/"})
                assert own.status_code == default.status_code == 202 and refused.status_code == 400
                view = (await http.get(f"/v1/jobs/{default.json()['id']}")).json()
                assert view["webhook_url"] == receiver.url("/default") and view["webhook"]["state"] == "pending"
                for answer in (own, default):  # no router runs: the jobs are queued, and cancelled
                    assert (await http.delete(f"/v1/jobs/{answer.json()['id']}")).status_code == 200
                await receiver.wait_for(2)
                await delivery_state(store, default.json()["id"], ("delivered",))
                view = (await http.get(f"/v1/jobs/{default.json()['id']}")).json()
    assert sorted(item.path for item in receiver.received) == ["/default", "/own"]
    assert view["webhook"]["state"] == "delivered" and view["webhook"]["attempts"] == 1
    assert view["webhook"]["type"].startswith("job.")


async def test_the_senders_container_probe_finds_it_ready() -> None:
    """docker/healthcheck.py webhooks, as its container runs it: healthy once the sender's own main runs."""
    from shared import metrics
    from tests.deploy.test_healthcheck import probe

    settings = fast_settings()
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    metrics.mark_ready("webhooks", False)
    try:
        async with store_of(settings), running_webhooks(settings):
            give_up_at = time.monotonic() + 30
            while True:
                code, output = await probe(settings.namespace, "webhooks", "--metrics-port", str(server.server_port))
                if code == 0 or time.monotonic() > give_up_at:
                    break
                await asyncio.sleep(0.2)
        assert (code, output.strip()) == (0, "healthy"), output
    finally:
        server.shutdown()
        server.server_close()


async def test_hadis_webhook_sets_a_tenants_default_and_rotates_its_secret(capsys: pytest.CaptureFixture) -> None:
    from shared.cli import build_parser
    from shared.commands.webhook import act

    async with store_of(fast_settings()) as store:
        async def hadis(*argv: str) -> tuple[int, dict]:
            code = await act(build_parser().parse_args(["webhook", *argv]), store)
            return code, orjson.loads(capsys.readouterr().out)

        code, shown = await hadis("set", "--tenant", "acme", "--url", "https://acme.example/hooks")
        assert code == 0 and shown["url"] == "https://acme.example/hooks" and len(shown["secrets"]) == 1
        code, rotated = await hadis("rotate-secret", "--tenant", "acme", "--grace", "60")
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != shown["secrets"][0]
        assert await store.webhook_secrets("acme") == [rotated["secret"], shown["secrets"][0]]
        code, cleared = await hadis("clear", "--tenant", "acme")
        assert cleared["url"] is None and await store.tenant_webhook_url("acme") is None
        code, other = await hadis("show")  # the jobs without a tenant have their own secret
        assert other["tenant"] is None and other["secrets"][0] not in (rotated["secret"], shown["secrets"][0])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webhook", "set", "--tenant", "acme", "--url", "ftp://acme.example/"])


async def test_every_resolved_address_is_checked_and_the_checked_one_is_connected_to() -> None:
    """A name that resolves to a public and a private address is refused (a resolver may hand out
    either next time); one that resolves to an allowed address is reached at that address, with the
    name in the Host header (the name is not resolved again: DNS rebinding has no second lookup)."""
    from shared.policies.webhooks import parse_networks
    from shared.webhook_client import Bounds, WebhookClient

    answers = {"mixed.example": ["93.184.215.14", "10.1.2.3"], "hooks.example": ["127.0.0.1"]}
    looked_up: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return answers[host]

    client = WebhookClient(Bounds(total_s=2.0, allowed=parse_networks("127.0.0.1")), resolver)
    try:
        with receiving() as receiver:
            mixed = await client.post(f"http://mixed.example:{receiver.port}/hook", b"{}", {})
            reached = await client.post(f"http://hooks.example:{receiver.port}/hook", b"{}", {})
    finally:
        await client.close()
    assert mixed.refused and "93.184.215.14" not in mixed.error and "10.1.2.3 is private" in mixed.error
    assert reached.status == 200 and looked_up == ["mixed.example", "hooks.example"]
    [request] = receiver.received
    assert request.headers["host"] == f"hooks.example:{receiver.port}"


async def test_https_is_verified_against_the_urls_name_at_the_checked_address(tmp_path) -> None:
    """The connection goes to the checked address, and TLS still checks the certificate against the
    URL's host (SNI): a certificate for hooks.example passes there, and fails for another name."""
    import shutil
    import ssl
    import subprocess

    from shared.policies.webhooks import parse_networks
    from shared.webhook_client import Bounds, WebhookClient

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=hooks.example", "-addext", "subjectAltName=DNS:hooks.example"],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    client = WebhookClient(Bounds(total_s=3.0, allowed=parse_networks("127.0.0.1")), resolver, verify=trusting)
    try:
        with receiving(tls=server_tls) as receiver:
            good = await client.post(f"https://hooks.example:{receiver.port}/hook", b"{}", {})
            wrong = await client.post(f"https://other.example:{receiver.port}/hook", b"{}", {})
    finally:
        await client.close()
    assert good.status == 200, good
    assert wrong.status is None and "certificate" in wrong.error.lower(), wrong
    assert [item.headers["host"] for item in receiver.received] == [f"hooks.example:{receiver.port}"]


async def test_a_delivery_outlives_a_short_record_ttl_and_an_overtaken_attempt_changes_nothing() -> None:
    from shared.policies.webhooks import DeliveryState

    async with store_of(fast_settings(job_ttl_s=60)) as store:
        job_id = await ended_job(store, "http://127.0.0.1:9/hook")
        [first] = await store.claim_webhooks(10, 5.0)
        assert await store.settle_webhook(first, DeliveryState.pending, 0.0, 500)
        [second] = await store.claim_webhooks(10, 5.0)
        assert second.attempt == 2
        assert not await store.settle_webhook(first, DeliveryState.delivered, status=200)  # overtaken
        assert await store.settle_webhook(second, DeliveryState.pending, 5000.0, 503)
        ttl = await store._redis.ttl(store.webhook_key(job_id))
        status = await store.webhook_status(job_id)
    assert 5600 - 5 <= ttl <= 5600
    assert status is not None and status["state"] == "pending" and status["last_status"] == 503
