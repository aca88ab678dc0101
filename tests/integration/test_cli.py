"""`hadis submit`, `hadis status` and `hadis cancel` as a user runs them, against running services."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest

from shared.schemas import Job, JobState
from shared.store import Change
from tests.helpers import make_settings, namespace
from tests.stack import running_stack

pytestmark = pytest.mark.integration


async def hadis(namespace: str, *args: str) -> tuple[int, dict]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from shared.cli import main; main()", *args,
        env={**os.environ, "HADIS_NAMESPACE": namespace, "HADIS_LOG_LEVEL": "warning"},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return process.returncode, orjson.loads(out)


async def test_submit_writes_png_and_status_prints_the_record(tmp_path):
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    async with running_stack(settings):
        out = tmp_path / "bike.png"
        code, record = await hadis(settings.namespace, "submit", "a red bicycle", "--out", str(out))
        assert code == 0 and record["state"] == "done" and record["latency_s"] > 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        code, status = await hadis(settings.namespace, "status", record["job_id"])
        assert code == 0 and status["history"] == record["history"]
        code, missing = await hadis(settings.namespace, "status", "no-such-job")
        assert code == 1 and "no such job" in missing["error"]


async def test_cancel_ends_a_job_that_has_not_ended_and_refuses_one_that_has():
    settings = make_settings()
    async with namespace(settings) as (_, store):
        job = Job(prompt="a red bicycle")
        await store.apply(Change(job.job_id, JobState.queued, job.record_fields(job.submitted_at + 60), create=True))
        code, record = await hadis(settings.namespace, "cancel", job.job_id)
        assert code == 0 and record["state"] == "cancelled", record
        code, again = await hadis(settings.namespace, "cancel", job.job_id)
        assert code == 1 and "cancelled" in again["error"]
        code, missing = await hadis(settings.namespace, "cancel", "no-such-job")
        assert code == 1 and "not recorded" in missing["error"]
