"""Graceful stops and restarts of the broker and the store, under steady load."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import pytest

from shared.client import Client
from shared.faults import Load, cluster
from shared.schemas import JobState
from tests.faults.harness import fault_settings, under_load
from tests.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


async def test_rabbitmq_restart_mid_run_loses_nothing():
    settings = fault_settings()
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            load = Load(client, rate_qps=5)
            await load.run(seconds=3, prefix="before")
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await asyncio.sleep(1)
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(rabbitmqctl, "await_startup")
            await load.run(seconds=4, prefix="after")
            outcome = await load.outcome(timeout_s=180)
            assert all(child.process.poll() is None for child in running.children.values()), "a service died"
    finally:
        await client.close()
    assert outcome.lost == 0 and outcome.duplicated == 0, str(outcome)
    assert outcome.count(JobState.done) == len(load.jobs), str(outcome)


def start_redis(port: int, directory) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
         "--appendfsync", "always", "--save", "", "--dir", str(directory), "--requirepass", "test-secret"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis did not start")


async def test_redis_restart_with_append_only_persistence_loses_nothing(tmp_path):
    port = free_port()
    servers = [start_redis(port, tmp_path)]
    settings = fault_settings(redis_url=f"redis://:test-secret@127.0.0.1:{port}/0")

    async def restart_redis(running) -> None:
        servers[-1].send_signal(signal.SIGTERM)
        servers[-1].wait(timeout=30)
        await asyncio.sleep(1)
        servers.append(start_redis(port, tmp_path))

    try:
        run = await under_load(settings, restart_redis, rate_qps=5, seconds=6, fault_after_s=2,
                               outcome_timeout_s=180)
    finally:
        servers[-1].terminate()
        servers[-1].wait(timeout=30)
    assert run.services_alive, "a service died"
    assert run.outcome.lost == 0 and run.outcome.duplicated == 0, str(run.outcome)
    assert run.outcome.count(JobState.done) == run.submitted, str(run.outcome)
