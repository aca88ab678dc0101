"""kill -9 of the webhook sender: a delivery it held (waiting for a retry, or in the middle of an
attempt) is not lost. The sender runs as a real process (shared/supervisor.py's Child, as `hadis
serve all` runs it); a new one, started after the kill, delivers what the dead one left."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shared.settings import Settings
from shared.store import Store
from shared.supervisor import Child
from tests.integration.test_webhooks import delivery_state, ended_job, fast_settings, store_of, verify
from tests.webhook_receiver import Script, receiving

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def sender_process(settings: Settings) -> Child:
    child = Child("webhooks", "services.webhooks", settings.as_env())
    child.start()
    return child


def kill_9(child: Child) -> None:
    assert child.process is not None and child.process.poll() is None, "the sender is not running"
    child.process.send_signal(signal.SIGKILL)
    assert child.process.wait(timeout=10) == -signal.SIGKILL


def stop(child: Child) -> None:
    if child.process is not None and child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
        child.process.wait(timeout=30)


async def attempts_made(store: Store, job_id: str, count: int, timeout_s: float = 60.0) -> dict:
    give_up_at = time.monotonic() + timeout_s
    while True:
        status = await store.webhook_status(job_id)
        if status is not None and status["attempts"] >= count and status["state"] != "delivering":
            return status
        assert time.monotonic() < give_up_at, f"{status}: not {count} attempts settled in {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_kill_9_while_a_delivery_waits_for_its_retry_loses_nothing() -> None:
    # The first attempt fails (500); its retry is due 3 s later; the sender dies in between.
    settings = fast_settings(webhook_retry_first_s=3.0, log_format="json")
    with receiving(Script(statuses=[500])) as receiver:
        async with store_of(settings) as store:
            first = sender_process(settings)
            try:
                job_id = await ended_job(store, receiver.url(), tenant="acme")
                waiting = await attempts_made(store, job_id, 1)
                assert waiting["state"] == "pending" and waiting["last_status"] == 500
                kill_9(first)
                second = sender_process(settings)
                try:
                    status = await delivery_state(store, job_id, ("delivered", "failed"), timeout_s=60)
                    secret = (await store.webhook_secrets("acme"))[0]
                    await asyncio.sleep(0.5)
                finally:
                    stop(second)
            finally:
                stop(first)
    assert status["state"] == "delivered" and status["attempts"] == 2
    assert [item.status for item in receiver.received] == [500, 200]
    assert verify(secret, receiver.received[-1])["data"]["job_id"] == job_id


async def test_kill_9_in_the_middle_of_an_attempt_loses_nothing() -> None:
    # The receiver holds the first attempt 4 s; the sender dies meanwhile, its claim lapses after the
    # lease (2 x 2 s + 5 s), and the new sender tries again.
    settings = fast_settings(log_format="json")
    with receiving(Script(delay_s=4.0)) as receiver:
        async with store_of(settings) as store:
            first = sender_process(settings)
            try:
                job_id = await ended_job(store, receiver.url())
                await receiver.wait_for(1, timeout_s=60)
                assert (await store.webhook_status(job_id) or {}).get("state") == "delivering"
                kill_9(first)
                receiver.script.delay_s = 0.0
                killed_at = time.monotonic()
                second = sender_process(settings)
                try:
                    status = await delivery_state(store, job_id, ("delivered", "failed"), timeout_s=60)
                    took = time.monotonic() - killed_at
                finally:
                    stop(second)
            finally:
                stop(first)
    assert status["state"] == "delivered" and status["attempts"] == 2
    assert len(receiver.received) == 2 and receiver.received[-1].status == 200
    assert took < 9.0 + 10.0  # the lease, and a process's start on a loaded machine
