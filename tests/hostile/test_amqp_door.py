"""The AMQP door tried as a hostile producer would (issue 29): bodies of any size, any tenant and any
job id written into a body, dead letters made to crash their consumer. With the real broker and
store; pika publishes as an outside producer does (a raw client, no user_id unless a test sets it).

The broker's bound on a message's size (BROKER_MAX_MESSAGE_BYTES) is applied to the machine's broker
as scripts/ensure_services.sh applies it (rabbitmqctl, as root); where it cannot be, the tests that
need it skip, and the others check that a body over it is dead-lettered instead, harmlessly."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import signal
import subprocess
import tracemalloc
from pathlib import Path

import orjson
import pika
import pika.exceptions
import pytest

from services import controller as controller_service
from shared import metrics
from shared.bus import BROKER_MAX_MESSAGE_BYTES, DEAD_LETTER_DELIVERY_LIMIT, QUEUE_BYTES_PER_MESSAGE, Bus, Delivery
from shared.schemas import MAX_MESSAGE_BYTES, Job, JobState, Task, Tier, job_id_of
from shared.store import Change, Store
from tests.faults.processes import RedisServer
from tests.helpers import eventually, free_port, make_settings, namespace
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
STACK = dict(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)


# --- the broker, as an outside producer sees it ---------------------------------------------------

def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)


def broker_max_message_size() -> int | None:
    """The running broker's max_message_size, after applying ours as ensure_services.sh does; None
    where rabbitmqctl cannot reach or change it (not root, another host)."""
    if shutil.which("rabbitmqctl") is None:
        return None
    rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {BROKER_MAX_MESSAGE_BYTES}).")
    done = rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).")
    found = re.fullmatch(r"\{ok,(\d+)\}", done.stdout.strip()) if done.returncode == 0 else None
    return int(found.group(1)) if found else None


@pytest.fixture(scope="module")
def broker_bounded() -> bool:
    """Whether the running broker refuses a body over BROKER_MAX_MESSAGE_BYTES (applied here if need be)."""
    bound = broker_max_message_size()
    return bound is not None and bound <= BROKER_MAX_MESSAGE_BYTES


def can_manage_users() -> bool:
    return shutil.which("rabbitmqctl") is not None and rabbitmqctl("list_users").returncode == 0


def publish(exchange: str, routing_key: str, body: bytes, *, user: tuple[str, str] = ("guest", "guest"),
            **properties) -> str:
    """Publish with confirms as an outside producer: "ok", or how the broker refused it."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, "/", pika.PlainCredentials(*user), connection_attempts=3, retry_delay=1))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, routing_key, body,
                              pika.BasicProperties(delivery_mode=2, content_type="application/json", **properties),
                              mandatory=True)
        return "ok"
    except pika.exceptions.ChannelClosedByBroker as error:
        return f"closed {error.reply_code} {error.reply_text}"
    except pika.exceptions.NackError:
        return "nacked"
    finally:
        if connection.is_open:
            connection.close()


async def publish_async(*args, **kwargs) -> str:
    return await asyncio.to_thread(publish, *args, **kwargs)


def padded(fields: dict, size: int) -> bytes:
    """A JSON object of exactly `size` bytes: the fields, then spaces (legal JSON whitespace)."""
    body = orjson.dumps(fields)
    return body[:-1] + b" " * (size - len(body)) + b"}"


def counter(name: str, **labels: str) -> float:
    return sum(sample.value for family in metrics.REGISTRY.collect() if family.name == name
               for sample in family.samples if sample.name.endswith("_total")
               and all(sample.labels.get(key) == value for key, value in labels.items()))


async def drained(bus: Bus, queue: str) -> bool:
    """Nothing ready, nothing unacked (no consumer holds one) — twice, a second apart."""
    for _ in range(2):
        if await bus.depth(queue) or await bus.consumers(queue) == 0:
            return False
        await asyncio.sleep(0.5)
    return await bus.depth(queue) == 0


def queued(job: Job, slo_s: float) -> Change:
    """The `queued` record the api writes for a job it accepted (services/api/submission.py: queued_record)."""
    return Change(job.job_id, JobState.queued, job.record_fields(job.effective_deadline(slo_s)), create=True)


# --- 1. bytes ------------------------------------------------------------------------------------

def test_the_broker_bound_is_configured_where_brokers_are_started():
    """compose (one node and the cluster), the servers `make run` and `make test` use, and the tests'
    private nodes give the broker one bound, twice what any service accepts."""
    assert BROKER_MAX_MESSAGE_BYTES >= 2 * MAX_MESSAGE_BYTES
    conf = (ROOT / "docker" / "rabbitmq-limits.conf").read_text()
    assert re.search(rf"^max_message_size = {BROKER_MAX_MESSAGE_BYTES}$", conf, re.M)
    mount = "./docker/rabbitmq-limits.conf:/etc/rabbitmq/conf.d/30-hadis-limits.conf:ro"
    assert (ROOT / "compose.yaml").read_text().count(mount) == 1
    assert (ROOT / "compose.cluster.yaml").read_text().count(mount) == 3
    ensure_services = (ROOT / "scripts" / "ensure_services.sh").read_text()
    assert f"BROKER_MAX_MESSAGE_BYTES={BROKER_MAX_MESSAGE_BYTES}" in ensure_services
    assert "max_message_size = {BROKER_MAX_MESSAGE_BYTES}" in (ROOT / "tests" / "faults" / "servers.py").read_text()


def test_an_oversized_body_is_not_parsed_for_its_id():
    body = padded({"job_id": "victim", "prompt": "x"}, 16 * MiB)
    tracemalloc.start()
    try:
        assert job_id_of(body) is None
        assert tracemalloc.get_traced_memory()[1] < MiB
    finally:
        tracemalloc.stop()
    assert job_id_of(padded({"job_id": "victim", "prompt": "x"}, MAX_MESSAGE_BYTES)) == "victim"


async def test_the_broker_refuses_a_body_over_its_bound(broker_bounded):
    if not broker_bounded:
        pytest.skip("the running broker's max_message_size is above ours, and rabbitmqctl cannot set it here")
    async with namespace(make_settings()) as (bus, _):
        ingress = bus.queues.ingress_exchange
        for size in (BROKER_MAX_MESSAGE_BYTES + 1, MiB, 16 * MiB):
            answer = await publish_async(ingress, "", b" " * size)
            assert answer.startswith("closed 406 PRECONDITION_FAILED - message size"), (size, answer)
        assert await publish_async(ingress, "", b" " * BROKER_MAX_MESSAGE_BYTES) == "ok"
        assert await bus.depth(bus.queues.requests) == 1


async def test_oversized_bodies_end_refused_or_dead_lettered_and_nothing_else_is_lost(broker_bounded):
    """Over the broker's bound: refused at the door (or, where the bound is not set, dead-lettered).
    Over a service's bound: dead-lettered unread; the id in its body gets nothing, its message_id a
    `failed` record where none exists. A valid job of exactly MAX_MESSAGE_BYTES is served, as are the
    jobs before and after; no service dies (running_stack checks)."""
    settings = make_settings(**STACK)
    async with running_stack(settings) as stack:
        ingress, queues = stack.bus.queues.ingress_exchange, stack.bus.queues
        before, after = Job(prompt="before: a red bicycle"), Job(prompt="after: a blue bicycle")
        edge = Job(prompt="at the edge: a green bicycle")
        dead_before = await stack.bus.depth(queues.dead)
        assert await publish_async(ingress, "", before.model_dump_json().encode()) == "ok"
        huge = [await publish_async(ingress, "", padded({"job_id": f"huge-{size}", "prompt": "x"}, size))
                for size in (MiB, 16 * MiB)]
        middle = await publish_async(ingress, "", padded({"job_id": "named-in-body", "prompt": "x"}, 100 * 1024),
                                     message_id="middle")
        assert middle == "ok"
        edge_body = padded(orjson.loads(edge.model_dump_json()), MAX_MESSAGE_BYTES)
        assert await publish_async(ingress, "", edge_body) == "ok"
        assert await publish_async(ingress, "", after.model_dump_json().encode()) == "ok"
        if broker_bounded:
            assert all(answer.startswith("closed 406 PRECONDITION_FAILED") for answer in huge), huge
        for job in (before, edge, after):
            assert (await stack.client.wait(job.job_id, 60)).state is JobState.done
        record = await stack.client.wait("middle", 30)
        assert record is not None and record.state is JobState.failed and "102400 bytes" in record.error, record
        await eventually("dead.watch drained", lambda: drained(stack.bus, queues.dead_watch))
        for job_id in ("named-in-body", "huge-1048576", "huge-16777216"):
            assert await stack.store.get(job_id) is None, job_id
        dead_lettered = 1 + sum(answer == "ok" for answer in huge)
        assert await stack.bus.depth(queues.dead) - dead_before == dead_lettered


async def test_every_queue_is_bounded_in_bytes():
    """A queue of 100 messages holds 400 KiB: bodies of 100 KiB fill it at the fifth, far below its
    count; the next publishes are refused, whoever publishes them (the broker refuses once the bytes
    held are over the bound)."""
    async with namespace(make_settings(queue_max_length=100)) as (bus, _):
        assert 100 * QUEUE_BYTES_PER_MESSAGE == 400 * 1024
        body = b" " * (100 * 1024)
        for exchange, routing_key, queue in (bus.queues.ingress_exchange, "", bus.queues.requests), \
                                            ("", bus.queues.judge, bus.queues.judge):
            answers = [await publish_async(exchange, routing_key, body) for _ in range(7)]
            held = answers.count("ok")  # 5 on RabbitMQ 3.10: it refuses once the bytes held are over the bound
            assert held in (4, 5) and answers == ["ok"] * held + ["nacked"] * (7 - held), answers
            assert await bus.depth(queue) == held


@pytest.mark.parametrize("queue", ["dead", "dead_watch"])
async def test_a_dead_letter_redelivered_again_and_again_is_dropped(queue):
    """The dead queues have no consumer that could die of a message for ever: a message returned
    DEAD_LETTER_DELIVERY_LIMIT times is dropped (its copy in the other dead queue is not)."""
    async with namespace(make_settings()) as (bus, _):
        assert await publish_async(bus.queues.dead_letter_exchange, "", b"{}") == "ok"
        name = getattr(bus.queues, queue)

        def return_until_gone() -> int:
            connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
            channel, deliveries = connection.channel(), 0
            while deliveries <= 2 * DEAD_LETTER_DELIVERY_LIMIT:
                method, _, _ = channel.basic_get(name)
                if method is None:
                    break
                deliveries += 1
                channel.basic_nack(method.delivery_tag, requeue=True)
            connection.close()
            return deliveries

        deliveries = await asyncio.to_thread(return_until_gone)
        assert DEAD_LETTER_DELIVERY_LIMIT <= deliveries <= DEAD_LETTER_DELIVERY_LIMIT + 1, deliveries
        assert await bus.depth(name) == 0
        other = bus.queues.dead_watch if queue == "dead" else bus.queues.dead
        assert await bus.depth(other) == 1


async def test_the_controller_settles_hostile_dead_letters_and_keeps_recording():
    """Dead letters too large to read, malformed, or naming a recorded job for a tenant their sender
    may not act for: each is acked once, none changes the recorded job, and a dead letter the
    services sent after them is still recorded."""
    settings = make_settings(**STACK)
    async with running_stack(settings, services=("controller",)) as stack:
        dlx, store = stack.bus.queues.dead_letter_exchange, stack.store
        victim = Job(prompt="the victim's prompt", tenant="acme")
        await store.apply(queued(victim, settings.slo_s))
        copies = [victim.model_dump_json().encode(),  # the same job, sent anonymously: no tenant
                  Task(job=victim, deadline=victim.submitted_at + 60, tier=Tier.light).model_dump_json().encode()]
        malformed = [b"\xff\xfe", b"[" * 60_000, b"[]", b"{}", b"null",
                     padded({"job_id": "named-in-body", "prompt": "x"}, 100 * 1024)]
        for body in copies + malformed:
            assert await publish_async(dlx, "", body) == "ok"
        mine = Job(prompt="a job of the services", tenant="acme")
        await store.apply(queued(mine, settings.slo_s))
        await stack.bus.publish(stack.bus.queues.dead_watch, Task(job=mine, deadline=mine.submitted_at + 60,
                                                                  tier=Tier.light))
        record = await stack.client.wait(mine.job_id, 30)
        assert record is not None and record.state is JobState.failed, record
        await eventually("dead.watch drained", lambda: drained(stack.bus, stack.bus.queues.dead_watch))
        assert (await store.get(victim.job_id)).state is JobState.queued
        assert await store.get("named-in-body") is None


async def test_the_controller_holds_a_dead_letter_through_a_redis_outage(tmp_path, monkeypatch):
    """A requeue counts as a delivery, and <ns>.dead.watch drops a message at its delivery limit: while
    Redis is away the controller holds a dead letter (delivered once) instead of sending it round."""
    redis = RedisServer(tmp_path, free_port())
    redis.start()
    counts: list[int] = []
    handle = controller_service.Controller.on_dead_letter

    async def counting(self, delivery: Delivery) -> None:
        counts.append(delivery.delivery_count)
        await handle(self, delivery)

    monkeypatch.setattr(controller_service.Controller, "on_dead_letter", counting)
    settings = make_settings(**STACK, redis_url=redis.url, store_retry_s=0.5)
    try:
        async with running_stack(settings, services=("controller",)) as stack:
            job = Job(prompt="dead-lettered while Redis is away")
            await stack.store.apply(queued(job, settings.slo_s))
            redis.stop(signal.SIGTERM)  # it writes its data out: the record is there when it is back
            await stack.bus.publish(stack.bus.queues.dead_watch, Task(job=job, deadline=job.submitted_at + 60,
                                                                      tier=Tier.light))
            await asyncio.sleep(2.5 * controller_service.DEAD_LETTER_RETRY_S)
            redis.start()
            record = await stack.client.wait(job.job_id, 30)
            assert record is not None and record.state is JobState.failed, record
            assert counts == [1]
    finally:
        redis.stop()


# --- 2. producer identity -------------------------------------------------------------------------

@pytest.fixture
def producer_users():
    """Make ingress-only producer users (docs/security.md), deleted after the test."""
    if not can_manage_users():
        pytest.skip("rabbitmqctl cannot manage users here")
    made: list[str] = []

    def make(name: str, exchange: str) -> tuple[str, str]:
        password = secrets.token_hex(16)  # hex: a password starting with "-" reads as an option to rabbitmqctl
        assert rabbitmqctl("add_user", name, password).returncode == 0
        made.append(name)
        assert rabbitmqctl("set_permissions", "-p", "/", name, "^$", f"^{re.escape(exchange)}$", "^$").returncode == 0
        return name, password

    yield make
    for name in made:
        rabbitmqctl("delete_user", name)


async def test_an_amqp_job_acts_for_its_senders_tenant_not_its_bodys(producer_users):
    settings = make_settings(**STACK)
    ingress = f"{settings.namespace}.ingress"
    producer = producer_users(f"tenant-{settings.namespace}", ingress)
    odd = producer_users(f"Odd.{settings.namespace}", ingress)  # a user name that is no tenant name
    async with running_stack(settings) as stack:
        signed, anonymous, services = (Job(prompt=f"{who}: a red bicycle", tenant="victim")
                                       for who in ("signed", "anonymous", "services"))
        bad_name = Job(prompt="from a user that is no tenant")
        assert await publish_async(ingress, "", signed.model_dump_json().encode(), user=producer,
                                   user_id=producer[0]) == "ok"
        assert await publish_async(ingress, "", anonymous.model_dump_json().encode(), user=producer) == "ok"
        assert await publish_async(ingress, "", bad_name.model_dump_json().encode(), user=odd, user_id=odd[0]) == "ok"
        impersonating = await publish_async(ingress, "", Job(prompt="x").model_dump_json().encode(),
                                            user=producer, user_id="guest")
        assert impersonating.startswith("closed 406 PRECONDITION_FAILED - user_id property"), impersonating
        await stack.client.submit(services)
        records = {job.job_id: await stack.client.wait(job.job_id, 60) for job in (signed, anonymous, services)}
        assert all(record.state is JobState.done for record in records.values()), records
        assert records[signed.job_id].tenant == producer[0]
        assert records[anonymous.job_id].tenant is None
        assert records[services.job_id].tenant == "victim"  # the services' own user: believed
        refused = await stack.client.wait(bad_name.job_id, 30)
        assert refused.state is JobState.failed and "not a tenant name" in refused.error, refused


# --- 3. a body naming another job -----------------------------------------------------------------

def task_in(queue: str) -> Task | None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    try:
        method, _, body = connection.channel().basic_get(queue, auto_ack=True)
        return Task.model_validate_json(body) if method is not None else None
    finally:
        connection.close()


async def test_a_body_naming_a_queued_job_cannot_change_it():
    """The api recorded job V `queued`; bodies that name V's id — another prompt, or V's own prompt
    and time sent by someone who may not act for V's tenant — are dropped: V stays queued and no
    Task goes out. V itself, sent by the services, is routed with its own prompt."""
    settings = make_settings(**STACK)
    async with running_stack(settings, services=("controller", "router")) as stack:
        victim = Job(prompt="the victim's prompt", tenant="acme")
        await stack.store.apply(queued(victim, settings.slo_s))
        taken = counter("hadis_ingress_distrusted", reason="job_id_taken")
        hostile = [victim.model_copy(update={"prompt": "another prompt", "tenant": None}), victim]
        for body in hostile:  # anonymous: the body's tenant is not believed
            assert await publish_async(stack.bus.queues.ingress_exchange, "", body.model_dump_json().encode()) == "ok"
        await eventually("ingress drained", lambda: drained(stack.bus, stack.bus.queues.requests))
        assert (await stack.store.get(victim.job_id)).state is JobState.queued
        assert counter("hadis_ingress_distrusted", reason="job_id_taken") == taken + 2
        light, heavy = stack.bus.queues.tier(Tier.light), stack.bus.queues.tier(Tier.heavy)
        assert await stack.bus.depth(light) + await stack.bus.depth(heavy) == 0
        await stack.client.submit(victim)
        record = await eventually("V routed", lambda: routed(stack.store, victim.job_id))
        # The router records `routed`, then publishes the Task: it reaches the queue a moment later.
        queue = light if record.tier is Tier.light else heavy
        task = await eventually("V's Task in its queue", lambda: asyncio.to_thread(task_in, queue))
        assert task.job == victim


async def routed(store: Store, job_id: str):
    record = await store.get(job_id)
    return record if record is not None and record.state is JobState.routed else None


async def test_the_router_publishes_nothing_when_its_transition_is_refused():
    """V is cancelled just before the router records it (a DELETE on the api does this; the router's
    step is one atomic call, Store.create_or_advance, so there is no read before it to cancel after):
    the store refuses `routed`, and the router must not send V on."""
    settings = make_settings(**STACK)
    async with running_stack(settings, services=("controller", "router")) as stack:
        victim = Job(prompt="cancelled while routed")
        await stack.store.apply(queued(victim, settings.slo_s))
        router_store = stack.services["router"].store
        record = router_store.create_or_advance

        async def cancel_then_record(change: Change, same: tuple[str, ...] = ()):
            await stack.store.fail(change.job_id, JobState.failed, "cancelled")  # a real write, just before
            return await record(change, same)

        router_store.create_or_advance = cancel_then_record  # type: ignore[method-assign]
        try:
            await stack.client.submit(victim)
            await eventually("ingress drained", lambda: drained(stack.bus, stack.bus.queues.requests))
        finally:
            router_store.create_or_advance = record  # type: ignore[method-assign]
        assert (await stack.store.get(victim.job_id)).state is JobState.failed
        light, heavy = stack.bus.queues.tier(Tier.light), stack.bus.queues.tier(Tier.heavy)
        assert await stack.bus.depth(light) + await stack.bus.depth(heavy) == 0
