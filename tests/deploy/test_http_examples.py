"""The HTTP examples of docs/backends.md, run as a reader would paste them: each code block marked
`<!-- tested:sh -->` or `<!-- tested:python -->` runs against the real services and the api, after
the `<!-- tested:setup -->` block (which makes the key with `hadis api-key create`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import make_settings
from tests.stack import running_api, running_stack

pytestmark = [pytest.mark.integration]

DOC = Path(__file__).resolve().parents[2] / "docs" / "backends.md"
BLOCK_RE = re.compile(r"<!-- tested:(setup|sh|python) -->\n```\w*\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str]]:
    return [(kind, code) for kind, code in BLOCK_RE.findall(DOC.read_text())]


def examples() -> list[tuple[str, str]]:
    return [(kind, code) for kind, code in blocks() if kind != "setup"]


def setup_block() -> str:
    [code] = [code for kind, code in blocks() if kind == "setup"]
    return code


def test_the_doc_has_tested_examples_of_both_kinds():
    kinds = [kind for kind, _ in examples()]
    assert kinds.count("sh") >= 2 and kinds.count("python") >= 2, kinds


async def run(kind: str, code: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """The setup block, the api's real address, then the example (bash, or python from the setup's shell)."""
    prelude = "set -euo pipefail\n" + setup_block() + f"export HADIS_API_URL={env['HADIS_API_URL']}\n"
    if kind == "sh":
        command = ["bash", "-c", prelude + code]
    else:
        command = ["bash", "-c", prelude + f"exec {sys.executable} -c \"$EXAMPLE\""]
        env = {**env, "EXAMPLE": code}
    process = await asyncio.create_subprocess_exec(*command, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, output.decode()


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None, reason="needs curl and jq")
async def test_every_http_example_runs_and_saves_a_png(tmp_path):
    settings = make_settings(backend="emulated", judge_backend="emulated", profile="tiny-cpu", time_scale=0)
    async with running_stack(settings) as _stack, running_api(settings) as base:
        env = {**os.environ, "HADIS_NAMESPACE": settings.namespace, "HADIS_API_URL": base,
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for index, (kind, code) in enumerate(examples()):
            cwd = tmp_path / f"example{index}"
            cwd.mkdir()
            status, output = await run(kind, code, env, cwd)
            assert status == 0, f"example {index} ({kind}) failed:\n{code}\n{output}"
            png = cwd / "bicycle.png"
            assert png.exists() and png.read_bytes().startswith(b"\x89PNG"), (index, kind, output)
