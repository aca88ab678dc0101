"""The README's quick start and its Python client snippet, run as written against `make run`'s stack.

Every command is read from README.md itself (its fenced code blocks), so that a changed README is
the text that runs. The stack is `make run` (module-scoped; default settings: the tiny pipelines and
the CLIP judge on the CPU, two emulated GPUs) in a namespace of its own with its api on a free port,
as tests/deploy/test_make_loadtest.py starts `hadis serve all`, and stopped as a user stops it: Ctrl-C,
a SIGINT to its process group.

What is changed from the text, and nothing else:
- the environment: HADIS_NAMESPACE, HADIS_API_PORT and HADIS_EMULATED_GPUS=2 (make run's default);
- `make run` is run as `make -o .venv/.installed run` (the install stamp taken as up to date: a test
  must not reinstall the virtualenv);
- `<job_id>` in `hadis status <job_id>` becomes the job_id that `hadis submit` printed;
- `localhost:8080` in the curl line becomes `localhost:PORT`, the stack's api;
- shell commands run through `bash` with `set -eo pipefail` first (so a failing stage of a pipe fails
  the test), in a temporary folder whose `.venv` links to the checkout's (so `.venv/bin/hadis` is
  the same program and `bike.png` lands there, not in the checkout);
- the Python snippet's top-level `async with` runs as the asyncio REPL runs it (compiled with
  PyCF_ALLOW_TOP_LEVEL_AWAIT, awaited in one event loop).

`make test` (the quick start's second line) is the unit and integration tiers: CI runs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from PIL import Image

from tests.deploy.test_make_loadtest import delete_namespace, first_job_done, stack_env, tail
from tests.helpers import free_port, make_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HEADING_RE = re.compile(r"^## (.+)$", re.M)
COMMAND_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 60.0

pytestmark = [pytest.mark.integration]


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    code: str


def blocks() -> list[Block]:
    """README.md's fenced code blocks, each with the `## ` section it is in."""
    text = README.read_text()
    headings = [(m.start(), m.group(1).strip()) for m in HEADING_RE.finditer(text)]
    found = []
    for match in FENCE_RE.finditer(text):
        section = [title for start, title in headings if start < match.start()][-1:] or [""]
        found.append(Block(section[0], match.group(1), match.group(2)))
    return found


def quick_start_lines() -> list[str]:
    """The shell lines of the quick start's blocks, a line continued with `\\` joined to the next."""
    lines: list[str] = []
    for block in blocks():
        if block.section == "Quick start" and block.lang == "sh":
            lines += block.code.replace("\\\n", "\\\n\x00").split("\n")
    joined: list[str] = []
    for line in lines:
        if line.startswith("\x00") and joined:
            joined[-1] += "\n" + line[1:]
        elif line.strip():
            joined.append(line)
    return joined


def command(containing: str) -> str:
    """The one quick-start line that holds `containing`."""
    matches = [line for line in quick_start_lines() if containing in line]
    assert len(matches) == 1, f"README's quick start: expected one line with {containing!r}, found {matches}"
    return matches[0]


def python_snippet() -> str:
    snippets = [block.code for block in blocks() if block.lang == "python" and "from hadis import" in block.code]
    assert len(snippets) == 1, f"README: expected one Python client snippet, found {len(snippets)}"
    return snippets[0]


def test_the_readme_has_the_commands_this_module_runs():
    for text in ("make run", "make test", "hadis submit", "hadis status <job_id>", "hadis status --cluster",
                 "hadis api-key create", "curl "):
        command(text)
    assert "localhost:8080" in command("curl ")
    assert "Client.connect()" in python_snippet()


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    log: Path
    work: Path


@pytest.fixture(scope="module")
def make_run(tmp_path_factory) -> Iterator[Stack]:
    """README's `make run` line in a session of its own; stopped with SIGINT to its process group
    (Ctrl-C), SIGKILL to the group if it hangs, and its namespace deleted afterwards."""
    namespace, port = make_settings().namespace, free_port()
    env = stack_env(namespace, port)
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(ROOT / ".venv")
    log = work / "make-run.log"
    line = command("make run")
    assert re.match(r"make run\b", line), line
    typed = line.replace("make run", "make -o .venv/.installed run", 1)
    with open(log, "ab") as output:
        stack = subprocess.Popen(["bash", "-c", typed], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        asyncio.run(first_job_done(env, stack, log))
        yield Stack(env, port, log, work)
    finally:
        stop(stack)
        asyncio.run(delete_namespace(namespace))


def stop(stack: subprocess.Popen) -> None:
    """Ctrl-C: SIGINT to the whole process group, then wait until every process of it is gone."""
    try:
        os.killpg(stack.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    give_up_at = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < give_up_at:
        stack.poll()
        try:
            os.killpg(stack.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(stack.pid, signal.SIGKILL)
    stack.wait(timeout=30)


def sh(stack: Stack, line: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -eo pipefail\n" + line], cwd=stack.work, env=stack.env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def ok(stack: Stack, line: str) -> str:
    result = sh(stack, line)
    assert result.returncode == 0, (f"{line}\nexited {result.returncode}:\n{result.stdout[-2000:]}\n"
                                    f"{result.stderr[-2000:]}\n--- make run:\n{tail(stack.log)}")
    return result.stdout


def check_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_quick_start_submit_status_and_cluster(make_run):
    stack = make_run
    bike = stack.work / "bike.png"
    bike.unlink(missing_ok=True)

    submitted = command("hadis submit")
    assert "--out bike.png" in submitted
    record = orjson.loads(ok(stack, submitted))
    assert record["state"] == "done" and record["latency_s"] > 0, record
    check_png(bike)

    status_line = command("hadis status <job_id>")
    status = orjson.loads(ok(stack, status_line.replace("<job_id>", record["job_id"])))
    assert status["job_id"] == record["job_id"] and status["state"] == "done"
    assert status["history"] == record["history"]

    cluster = orjson.loads(ok(stack, command("hadis status --cluster")))
    assert cluster["plan"] is not None and cluster["plan"]["version"] >= 1, cluster
    assert sum(len(gpus) for gpus in cluster["agents"].values()) == 2, cluster  # HADIS_EMULATED_GPUS
    tiers = [worker.get("tier") for worker in cluster["workers"]]
    assert tiers and set(tiers) <= {"light", "heavy"}, cluster


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None or shutil.which("base64") is None,
                    reason="the README's HTTP example needs curl, jq and base64 on PATH")
def test_quick_start_over_http(make_run):
    stack = make_run
    bike = stack.work / "bike.png"
    bike.unlink(missing_ok=True)
    key_line, curl_line = command("hadis api-key create"), command("curl ")
    assert curl_line.count("localhost:8080") == 1, curl_line
    ok(stack, key_line + "\n" + curl_line.replace("localhost:8080", f"localhost:{stack.port}"))
    check_png(bike)


WRAPPER = """\
import ast, asyncio, os, sys
code = compile(os.environ["README_SNIPPET"], "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
names = {}
async def main():
    result = eval(code, names)
    if result is not None:
        await result
asyncio.run(main())
open(sys.argv[1], "wb").write(names["png"])
print(names["record"].model_dump_json())
"""


def test_python_client_snippet(make_run):
    stack = make_run
    out = stack.work / "snippet.png"
    result = subprocess.run([sys.executable, "-c", WRAPPER, str(out)], cwd=stack.work,
                            env={**stack.env, "README_SNIPPET": python_snippet()},
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n--- make run:\n{tail(stack.log)}"
    record = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert record["state"] == "done", record
    check_png(out)
