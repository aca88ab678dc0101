"""Outages longer than a hiccup: a broker that blocks publishers (a memory alarm), and a Redis that
is away for longer than the old 30-second budget. The services wait them out."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shared.bus import Bus, Delivery
from shared.errors import Disposition, Unavailable
from shared.schemas import JobState
from tests.faults.harness import fault_settings, under_load
from tests.faults.processes import RedisServer
from tests.faults.servers import RabbitNode
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration]


def messages(node: RabbitNode, queue: str) -> int:
    """Messages in a queue, ready and unacked."""
    for line in node.ctl("list_queues", "-q", "--no-table-headers", "name", "messages").splitlines():
        name, _, count = line.strip().partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue}")


@pytest.mark.skipif(not RabbitNode.available(), reason="needs Debian's rabbitmq-server")
async def test_a_memory_alarm_bounds_a_publish_and_acks_still_flow(tmp_path):
    """Under a memory alarm RabbitMQ blocks the connections that publish. A publish gives up within
    HADIS_PUBLISH_TIMEOUT_S (it used to wait for ever), and acks still reach the broker: they go on
    the consuming connection, which the alarm does not block."""
    node = RabbitNode(tmp_path, free_port(), free_port())
    node.start()
    bus = await Bus.connect(make_settings(amqp_url=node.url, publish_timeout_s=3))
    try:
        queue, held = bus.queues.requests, []

        async def hold(delivery: Delivery) -> None:
            held.append(delivery)

        consumer = await bus.consume(queue, hold, prefetch=10)
        for index in range(3):
            await bus.publish(queue, b'{"n": %d}' % index)
        while len(held) < 3:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.000001")
        await asyncio.sleep(1.0)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bus.publish(queue, b'{"blocked": true}')
        assert time.monotonic() - started < 3 + 2
        for delivery in held:
            await delivery.settle(Disposition.ack)
        give_up_at = time.monotonic() + 10
        while (left := await asyncio.to_thread(messages, node, queue)) != 0:
            assert time.monotonic() < give_up_at, f"{left} messages still held: the acks did not get through"
            await asyncio.sleep(0.2)
        await asyncio.to_thread(node.ctl, "set_vm_memory_high_watermark", "0.4")
        await consumer.cancel()
    finally:
        await bus.close()
        node.kill()


async def test_a_redis_outage_of_40_seconds_fails_no_job(tmp_path):
    """Redis away for 40 s under load: every Redis call waits (HADIS_STORE_RETRY_S, 300 s) instead of
    failing the job after 10 s x 3 deliveries; the broker keeps the work meanwhile."""
    server = RedisServer(tmp_path, free_port(), password="test-secret")
    server.start()
    settings = fault_settings(redis_url=server.url, slo_s=600)

    async def outage(running) -> None:
        await asyncio.to_thread(server.stop, signal.SIGKILL)
        await asyncio.sleep(40)
        await asyncio.to_thread(server.start)

    try:
        run = await under_load(settings, outage, rate_qps=3, seconds=10, fault_after_s=3, outcome_timeout_s=180)
    finally:
        server.stop(signal.SIGTERM)
    assert run.services_alive, "a service died"
    assert run.outcome.lost == 0 and run.outcome.duplicated == 0, str(run.outcome)
    assert run.outcome.count(JobState.done) == run.submitted, str(run.outcome)
