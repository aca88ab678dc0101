"""docs/security.md's least-privilege AMQP producer, made with rabbitmqctl as the doc says: it can
submit jobs through `<ns>.ingress`, and it cannot publish anywhere else, read a queue or declare one."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess

import orjson
import pika
import pika.exceptions
import pytest

from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


def can_manage_users() -> bool:
    return shutil.which("rabbitmqctl") is not None and rabbitmqctl("list_users").returncode == 0


def connect(user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, "/", pika.PlainCredentials(user, password), connection_attempts=3, retry_delay=1))


def refused(action) -> bool:
    try:
        action()
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ChannelWrongStateError) as error:
        return "ACCESS_REFUSED" in str(error) or "403" in str(error) or isinstance(
            error, pika.exceptions.ChannelWrongStateError)
    return False


@pytest.mark.skipif(not can_manage_users(), reason="rabbitmqctl cannot manage users here")
async def test_an_ingress_only_producer_submits_and_can_do_nothing_else():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    ns = settings.namespace
    user, password = f"producer-{ns}", secrets.token_hex(16)  # hex: never starts with "-" (rabbitmqctl option)
    assert rabbitmqctl("add_user", user, password).returncode == 0
    try:
        # The doc's command: configure nothing, write only to the ingress exchange, read nothing.
        assert rabbitmqctl("set_permissions", "-p", "/", user, "^$", f"^{ns}\\.ingress$", "^$").returncode == 0
        async with running_stack(settings) as stack:
            job = Job(prompt="a red bicycle", metadata={"via": "ingress-only producer"})

            def publish_ok() -> None:
                connection = connect(user, password)
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_publish(f"{ns}.ingress", "", job.model_dump_json().encode(),
                                      pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                                           message_id=job.job_id), mandatory=True)
                connection.close()

            await asyncio.to_thread(publish_ok)
            record = await stack.client.wait(job.job_id, timeout_s=60)
            assert record is not None and record.state is JobState.done, record

            def forbidden() -> list[str]:
                connection = connect(user, password)
                attempts = {
                    "publish to a tier queue": lambda ch: ch.basic_publish("", f"{ns}.tier.light",
                                                                            orjson.dumps({"x": 1})),
                    "read the ingress queue": lambda ch: ch.basic_get(f"{ns}.requests"),
                    "declare a queue": lambda ch: ch.queue_declare(f"{ns}.mine"),
                    "purge a queue": lambda ch: ch.queue_purge(f"{ns}.requests"),
                }
                allowed = []
                for what, attempt in attempts.items():
                    channel = connection.channel()
                    channel.confirm_delivery()
                    if not refused(lambda channel=channel, attempt=attempt: attempt(channel)):
                        allowed.append(what)
                connection.close()
                return allowed

            assert await asyncio.to_thread(forbidden) == []
    finally:
        rabbitmqctl("delete_user", user)
