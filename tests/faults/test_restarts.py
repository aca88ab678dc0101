"""Graceful stops and restarts of the broker and the store, under steady load."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shared.client import Client
from shared.schemas import JobState
from tests.faults.harness import fault_settings, under_load
from tests.faults.processes import Load, RedisServer, cluster
from tests.faults.servers import RabbitNode
from tests.helpers import free_port

pytestmark = [pytest.mark.integration]


def generated_again(record) -> bool:
    states = [t.state for t in record.history]
    return states.count(JobState.generating) > 1 + states.count(JobState.escalated)


async def test_sigterm_finishes_the_batch_in_hand_and_requeues_the_rest():
    settings = fault_settings(shutdown_grace_s=10.0)

    async def stop_gracefully(running) -> tuple[int, float]:
        started = time.monotonic()
        code = running.kill("light", signal.SIGTERM)
        stopped_in = time.monotonic() - started
        running.start("light")
        return code, stopped_in

    run = await under_load(settings, stop_gracefully, rate_qps=6, seconds=6, fault_after_s=3)
    code, stopped_in = run.fault_result
    outcome = run.outcome
    assert code == 0 and stopped_in < settings.shutdown_grace_s
    assert outcome.lost == 0 and outcome.count(JobState.done) == run.submitted, str(outcome)
    assert not [r.job_id for r in outcome.records if generated_again(r)], "a graceful stop regenerated work"


@pytest.mark.skipif(not RabbitNode.available(), reason="needs Debian's rabbitmq-server")
async def test_rabbitmq_restart_mid_run_loses_nothing(tmp_path):
    """A graceful broker restart (stop_app, start_app) between two bursts of load. On a node of its
    own: the machine's broker serves the tiers that CI runs beside this one."""
    node = RabbitNode(tmp_path, free_port(), free_port())
    node.start()
    settings = fault_settings(amqp_url=node.url)
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            load = Load(client, rate_qps=5)
            await load.run(seconds=3, prefix="before")
            await asyncio.to_thread(node.ctl, "stop_app")
            await asyncio.sleep(1)
            await asyncio.to_thread(node.ctl, "start_app")
            await asyncio.to_thread(node.ctl, "await_startup")
            await load.run(seconds=4, prefix="after")
            outcome = await load.outcome(timeout_s=180)
            assert all(child.process.poll() is None for child in running.children.values()), "a service died"
    finally:
        await client.close()
        node.kill()
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == len(load.jobs), str(outcome)


@pytest.mark.skipif(not RabbitNode.available(), reason="needs Debian's rabbitmq-server")
async def test_rabbitmq_kill_9_while_clients_keep_publishing_loses_nothing(tmp_path):
    """The broker dies mid-load (SIGKILL: no goodbye to any connection) while the load goes on
    publishing; the services wait it out, reconnect, restore their consumers (quorum queues
    whose leaders are not up yet included) and finish every job, none twice."""
    node = RabbitNode(tmp_path, free_port(), free_port())
    node.start()
    settings = fault_settings(amqp_url=node.url)

    async def kill_9_and_restart(running) -> float:
        started = time.monotonic()
        await asyncio.to_thread(node.kill)
        await asyncio.sleep(2)
        await asyncio.to_thread(node.start)
        return time.monotonic() - started

    try:
        run = await under_load(settings, kill_9_and_restart, rate_qps=5, seconds=10, fault_after_s=3,
                               outcome_timeout_s=180)
    finally:
        node.kill()
    assert run.services_alive, "a service died"
    assert run.outcome.lost == 0 and run.outcome.duplicated == 0, str(run.outcome)
    assert run.outcome.count(JobState.done) == run.submitted, str(run.outcome)


async def test_redis_kill_9_with_the_compose_persistence_loses_nothing(tmp_path):
    """Redis dies mid-load (SIGKILL) while the load goes on publishing, persisted as compose runs
    it (compose_redis_args reads compose.yaml: the test cannot drift from what is deployed)."""
    server = RedisServer(tmp_path, free_port(), password="test-secret")
    server.start()
    settings = fault_settings(redis_url=server.url)

    async def kill_9_and_restart(running) -> None:
        await asyncio.to_thread(server.stop, signal.SIGKILL)
        await asyncio.sleep(2)
        await asyncio.to_thread(server.start)

    try:
        run = await under_load(settings, kill_9_and_restart, rate_qps=5, seconds=8, fault_after_s=3,
                               outcome_timeout_s=180)
    finally:
        server.stop(signal.SIGTERM)
    assert run.services_alive, "a service died"
    assert run.outcome.lost == 0 and run.outcome.duplicated == 0, str(run.outcome)
    assert run.outcome.count(JobState.done) == run.submitted, str(run.outcome)
