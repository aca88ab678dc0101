"""A worker killed with SIGKILL in the middle of a batch loses nothing: its unacked
deliveries go back to the queue and another worker finishes them, each job once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from shared.schemas import Job, JobState
from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = pytest.mark.integration


def start_light_worker(namespace: str, **settings: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "HADIS_NAMESPACE": namespace,
        "HADIS_TIER": "light",
        "HADIS_BACKEND": "emulated",
        "HADIS_PROFILE": "paper-l40s-x10",
        "HADIS_TIME_SCALE": "10",  # a batch of 4 takes 1.8 s: long enough to be killed inside it
        "HADIS_PLAN_R": "0",
        "HADIS_PLAN_D": "0",
        "HADIS_LOG_LEVEL": "warning",
        **settings,
    }
    return subprocess.Popen([sys.executable, "-m", "services.worker"], env=env)


async def wait_for_state(store, job_ids, state, timeout_s=60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        for job_id in job_ids:
            record = await store.get(job_id)
            if record is not None and record.state is state:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no job reached {state}")


async def test_killed_worker_mid_batch_loses_nothing():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10",
                             time_scale=10, plan_light_batch=4)
    async with running_stack(settings, services=("controller", "router", "judge")) as stack:
        first = start_light_worker(settings.namespace)
        second = None
        try:
            jobs = [Job(prompt=f"a red bicycle number {i}") for i in range(12)]
            await stack.submit_many(jobs)
            await wait_for_state(stack.store, [job.job_id for job in jobs], JobState.generating)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            second = start_light_worker(settings.namespace)
            records = await stack.wait_all([job.job_id for job in jobs], timeout_s=120)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(timeout=30)
        assert all(record.state is JobState.done for record in records)
        redone = [r for r in records if [t.state for t in r.history].count(JobState.generating) > 1]
        assert redone, "the killed batch should have been generated again"
        for record in records:
            assert [t.state for t in record.history].count(JobState.done) == 1


async def model_process_of(worker: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """The pid of the worker's model process, once it has one."""
    for _ in range(int(timeout_s / 0.05)):
        children = subprocess.run(["pgrep", "-P", str(worker.pid), "-f", "shared.backends.model_process"],
                                  capture_output=True, text=True).stdout.split()
        if children:
            return int(children[0])
        await asyncio.sleep(0.05)
    raise AssertionError("the worker started no model process")


async def test_a_killed_model_process_is_restarted_and_its_batch_retried():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="paper-l40s-x10",
                             time_scale=10, plan_light_batch=4)
    async with running_stack(settings, services=("controller", "router", "judge")) as stack:
        worker = start_light_worker(settings.namespace, HADIS_MODEL_PROCESS="separate")
        try:
            model_pid = await model_process_of(worker)
            jobs = [Job(prompt=f"a green kite number {i}") for i in range(8)]
            await stack.submit_many(jobs)
            await wait_for_state(stack.store, [job.job_id for job in jobs], JobState.generating)
            os.kill(model_pid, signal.SIGKILL)
            records = await stack.wait_all([job.job_id for job in jobs], timeout_s=120)
            assert worker.poll() is None, "the worker itself keeps serving"
            assert await model_process_of(worker) != model_pid
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert all(record.state is JobState.done for record in records)
        for record in records:
            assert [t.state for t in record.history].count(JobState.done) == 1
