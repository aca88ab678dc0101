"""docker/healthcheck.py, run as the containers run it, against a router on the real broker and store."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from services import agent
from shared import metrics
from shared.service import serve
from tests.helpers import make_settings
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration]

PROBE = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


async def probe(namespace: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "HADIS_NAMESPACE": namespace, "HADIS_PROFILE": "tiny-cpu", "HADIS_TIER": "light"}
    process = await asyncio.create_subprocess_exec(sys.executable, str(PROBE), *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode, output.decode()


async def test_probe_follows_the_consumers_and_the_metrics_endpoint():
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    port = str(server.server_port)
    try:
        async with running_stack(settings, services=("router",)):
            # The router marks itself ready once it consumes (the probe a container runs, unaided).
            code, output = await probe(settings.namespace, "router", "--metrics-port", port)
            assert (code, output.strip()) == (0, "healthy"), output
            code, output = await probe(settings.namespace, "router")
            assert (code, output.strip()) == (0, "healthy")
            code, output = await probe(settings.namespace, "worker")
            assert code == 1 and "tier.light has no consumer" in output
            metrics.mark_ready("router", False)
            code, output = await probe(settings.namespace, "router", "--metrics-port", port)
            assert code == 1 and "hadis_service_ready" in output
            metrics.mark_ready("router")
            code, output = await probe(settings.namespace, "router", "--metrics-port", port)
            assert (code, output.strip()) == (0, "healthy")
    finally:
        server.shutdown()
        server.server_close()


async def test_probe_without_the_namespace_is_unhealthy():
    code, output = await probe(make_settings().namespace, "controller")
    assert code == 1 and "dead.watch" in output


async def test_every_service_marks_itself_ready_as_it_runs():
    """Each service's own main, run as a container runs it, turns its readiness on: nothing in the
    test marks it (the router once never did, and its container never became healthy)."""
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    port = str(server.server_port)
    for name in ("router", "judge", "worker", "controller", "api"):
        metrics.mark_ready(name, False)
    try:
        async with running_stack(settings, services=("controller", "router", "judge", "light")), \
                running_api(settings):
            for name in ("router", "judge", "worker", "controller", "api"):
                code, output = await probe(settings.namespace, name, "--metrics-port", port)
                assert (code, output.strip()) == (0, "healthy"), (name, output)
    finally:
        server.shutdown()
        server.server_close()


async def test_the_agent_marks_itself_ready_once_registered():
    """The agent container's probe: healthy once the agent's own main has registered its GPUs."""
    settings = make_settings(emulated_gpus=0)
    server = metrics.start_metrics_server(0, addr="127.0.0.1")
    metrics.mark_ready("agent", False)
    stopping = asyncio.Event()
    task = asyncio.create_task(serve("agent", agent.main, settings, stopping))
    try:
        async with running_stack(settings, services=("router",)):
            for _ in range(40):
                code, output = await probe(settings.namespace, "agent", "--metrics-port", str(server.server_port))
                if code == 0:
                    break
                await asyncio.sleep(0.25)
            assert (code, output.strip()) == (0, "healthy"), output
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=60)
        server.shutdown()
        server.server_close()
