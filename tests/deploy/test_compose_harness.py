"""scripts/compose/ (`make test-compose`) without an engine: its stand-ins carry exactly the image
names compose.yaml and docker/Dockerfile use (a renamed base would make the harness build images
nothing runs), and its scripts parse."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "scripts" / "compose"


def standin_names() -> set[str]:
    text = (HARNESS / "standins.sh").read_text()
    uv_version = re.search(r"^UV_VERSION=(\S+)$", text, re.MULTILINE).group(1)
    names = re.findall(r"^(?:RABBITMQ|REDIS|PYTHON|CUDA|UV)=(\S+)$", text, re.MULTILINE)
    return {name.replace("$UV_VERSION", uv_version) for name in names}


def used_base_images() -> set[str]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    from_compose = {compose["services"][name]["image"] for name in ("rabbitmq", "redis")}
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    from_dockerfile = set(re.findall(r"^ARG (?:PYTHON|CUDA|UV)_IMAGE=(\S+)$", dockerfile, re.MULTILINE))
    return from_compose | from_dockerfile


def test_standins_are_tagged_with_the_names_the_deployment_uses():
    assert len(used_base_images()) == 5
    assert standin_names() == used_base_images()


@pytest.mark.parametrize("script", sorted(p.name for p in HARNESS.glob("*.sh")))
def test_harness_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(HARNESS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
