"""docs/examples/shell/publish.sh against the real services, publishing through RabbitMQ's
management API with curl and with rabbitmqadmin. Skipped, saying why, where the management plugin
is not enabled (`rabbitmq-plugins enable rabbitmq_management`) or a tool is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import orjson
import pytest

from tests.helpers import make_settings
from tests.stack import running_stack

pytestmark = [pytest.mark.integration]

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "shell" / "publish.sh"
MANAGEMENT_URL = "http://127.0.0.1:15672"


def management_api_answers() -> bool:
    request = urllib.request.Request(f"{MANAGEMENT_URL}/api/overview",
                                     headers={"Authorization": "Basic " + b64encode(b"guest:guest").decode()})
    try:
        with urllib.request.urlopen(request, timeout=3):
            return True
    except (urllib.error.URLError, OSError):
        return False


def missing_tools(publisher: str) -> list[str]:
    return [tool for tool in ("bash", "jq", "redis-cli", publisher) if shutil.which(tool) is None]


@pytest.fixture(params=["curl", "rabbitmqadmin"])
def publisher(request) -> str:
    if missing := missing_tools(request.param):
        pytest.skip(f"not installed: {', '.join(missing)}")
    if not management_api_answers():
        pytest.skip(f"RabbitMQ's management API does not answer at {MANAGEMENT_URL}: "
                    "rabbitmq-plugins enable rabbitmq_management")
    return request.param


async def run_script(publisher: str, namespace: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PUBLISH_WITH": publisher, "HADIS_NAMESPACE": namespace, "TIMEOUT_S": "60",
           "RABBITMQ_MANAGEMENT_URL": MANAGEMENT_URL, "REDIS_URL": "redis://127.0.0.1:6379/0"}
    process = await asyncio.create_subprocess_exec("bash", str(SCRIPT), *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_shell_example_publishes_waits_and_saves_the_png(publisher, tmp_path):
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    out = tmp_path / "bike.png"
    async with running_stack(settings) as stack:
        code, stdout, stderr = await run_script(publisher, settings.namespace, 'a "red" bicycle\nat dusk', str(out))
        assert code == 0, stdout + stderr
        record = orjson.loads(stdout)
        stored = await stack.client.image(record["job_id"])
    assert record["state"] == "done" and record["prompt"] == 'a "red" bicycle\nat dusk'
    assert record["history"][0]["state"] == "queued" and record["history"][-1]["state"] == "done"
    assert orjson.loads(record["metadata"]) == {"source": "shell-example"}
    assert out.read_bytes() == stored and stored.startswith(b"\x89PNG")


async def test_shell_example_says_when_no_stack_listens(publisher):
    code, _, stderr = await run_script(publisher, make_settings().namespace, "a red bicycle")
    assert code == 3 and "is the stack running" in stderr
