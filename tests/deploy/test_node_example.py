"""docs/examples/node/publish.mjs against the real services: publish from Node.js (amqplib), wait
through Redis (the `redis` client), save the PNG. Its npm packages are installed once into a cache
folder keyed by the lock file; the test is skipped only when node/npm are missing or the npm
registry cannot be reached."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "node"
UNREACHABLE = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|network", re.IGNORECASE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hadis"


@pytest.fixture(scope="module")
def example_dir() -> Path:
    """A folder with the example's node_modules (npm ci, once per lock file) and its script."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    lock = (EXAMPLE / "package-lock.json").read_bytes()
    folder = cache_root() / f"node-example-{hashlib.sha256(lock).hexdigest()[:12]}"
    if not (folder / "node_modules" / "amqplib").is_dir() or not (folder / "node_modules" / "redis").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(EXAMPLE / name, folder / name)
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            if UNREACHABLE.search(result.stderr):
                pytest.skip(f"the npm registry is unreachable: {result.stderr.strip()[-300:]}")
            pytest.fail(f"npm ci failed: {result.stderr[-2000:]}")
    shutil.copy(EXAMPLE / "publish.mjs", folder / "publish.mjs")
    return folder


async def run_example(folder: Path, namespace: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/", "REDIS_URL": "redis://127.0.0.1:6379/0",
           "HADIS_NAMESPACE": namespace}
    process = await asyncio.create_subprocess_exec("node", "publish.mjs", *args, cwd=folder, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_node_example_publishes_waits_and_saves_the_png(example_dir, tmp_path):
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0,
                             plan_r=0.0, plan_d=1.0)
    out = tmp_path / "bike.png"
    async with running_stack(settings) as stack:
        code, stdout, stderr = await run_example(example_dir, settings.namespace, "a red bicycle", "--out", str(out),
                                                 "--slo", "30", "--timeout", "60")
        assert code == 0, stdout + stderr
        record = orjson.loads(stdout)
        stored = await stack.client.image(record["job_id"])
        status = await stack.client.status(record["job_id"])
    assert record["state"] == "done" and record["saved_to"] == str(out)
    assert [t["state"] for t in record["history"]] == [t.state.value for t in status.history]
    assert record["history"][-1]["state"] == "done" and record["escalated"] == "1"  # d = 1 escalates every job
    png = out.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and png == stored


async def test_node_example_says_when_no_stack_listens(example_dir):
    code, stdout, stderr = await run_example(example_dir, make_settings().namespace, "a red bicycle", "--timeout", "5")
    assert code == 3 and "is the stack running" in stderr
