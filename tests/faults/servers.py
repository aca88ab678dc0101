"""Private RabbitMQ and Redis servers for the tests that kill them with SIGKILL: the machine's own
broker and store serve every other test and are left alone. Test harness only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from shared.bus import BROKER_MAX_MESSAGE_BYTES
from tests.faults.processes import RedisServer, cluster_redis_args
from tests.helpers import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def wait_port(port: int, timeout_s: float) -> None:
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s")


class RabbitNode:
    """A RabbitMQ node of its own (own node name, ports, data and config: the system config pins
    5672), with its data kept across a kill -9 and a restart, as a crashed broker would."""

    def __init__(self, directory: Path, port: int, dist_port: int, cookie: str = "") -> None:
        self.directory, self.port, self.dist_port = directory, port, dist_port
        (directory / "home").mkdir(parents=True, exist_ok=True)
        if cookie:  # nodes of one cluster share their Erlang cookie
            cookie_file = directory / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        # The bound on a message's size that compose gives the broker (docker/rabbitmq-limits.conf).
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n"
                                                 f"max_message_size = {BROKER_MAX_MESSAGE_BYTES}\n")
        (directory / "enabled_plugins").write_text("[].\n")  # no management UI (it would take 15672)
        self.process: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return os.path.exists(RABBITMQ_SERVER) and shutil.which("erl") is not None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 60.0) -> None:
        d = self.directory
        env = {**os.environ, "HOME": str(d / "home"), "RABBITMQ_NODENAME": f"hadistest{self.port}@localhost",
               "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
               "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
               "RABBITMQ_PID_FILE": str(d / "pid"), "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins")}
        with open(d / "server.log", "ab") as output:
            self.process = subprocess.Popen([RABBITMQ_SERVER], env=env, stdout=output, stderr=subprocess.STDOUT,
                                            cwd=d, start_new_session=True)
        wait_port(self.port, timeout_s)

    @property
    def name(self) -> str:
        return f"hadistest{self.port}@localhost"

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node (its cookie is in its own HOME)."""
        done = subprocess.run([RABBITMQ_SERVER.replace("rabbitmq-server", "rabbitmqctl"), "-n",
                               f"hadistest{self.port}@localhost", *args],
                              env={**os.environ, "HOME": str(self.directory / "home")},
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the Erlang VM (what a crash or an OOM kill does), and whatever it started."""
        if self.process is None:
            return
        pid_file = self.directory / "pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None


class RabbitCluster:
    """Three RabbitMQ nodes joined in one cluster (quorum queues declared on it get three members),
    beside the machine's own broker, which is left alone."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cookie = "HADISTESTCLUSTER" + os.urandom(8).hex().upper()
        self.nodes = [RabbitNode(directory / f"node{index}", free_port(), free_port(), cookie)
                      for index in range(size)]

    @property
    def url(self) -> str:
        """HADIS_AMQP_URL for the cluster: every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        for node in self.nodes:
            node.ctl("await_startup")

    def leader_of(self, queue: str) -> RabbitNode:
        """The node that leads a quorum queue now (asked of a node still running)."""
        alive = next(node for node in self.nodes if node.process is not None)
        for line in alive.ctl("list_queues", "name", "leader", "--no-table-headers", "--quiet").splitlines():
            name, _, leader = line.strip().partition("\t")
            if name == queue:
                return next(node for node in self.nodes if node.name == leader.strip())
        raise RuntimeError(f"no quorum queue {queue} on the cluster")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


MASTER = "hadis"


class RedisGroup:
    """A primary, two replicas and three Sentinels on free ports, in a directory of their own (as
    compose.cluster.yaml runs them): after a failover one replica is left to acknowledge WAIT."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary_port = free_port()
        self.replica_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[str, RedisServer] = {}  # primary, replica0, replica1
        self.processes: dict[str, subprocess.Popen] = {}  # the Sentinels

    def start(self) -> None:
        self._server("primary", self.primary_port)
        for index, port in enumerate(self.replica_ports):
            self._server(f"replica{index}", port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for index, port in enumerate(self.sentinel_ports):
            config = self.directory / f"sentinel{index}.conf"
            config.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                              f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                              f"sentinel down-after-milliseconds {MASTER} 1000\n"
                              # compose.cluster.yaml's (docker/cluster/redis-ha.sh). With 10 s, in a loaded
                              # CI the promoted server answered as a replica again 10 s after it took
                              # writes (a failover given up at its timeout, most likely): they were lost.
                              f"sentinel failover-timeout {MASTER} 60000\n")
            self.processes[f"sentinel{index}"] = subprocess.Popen(
                ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port, 30)
        # Load starts once the replica is in sync and every Sentinel knows it (they learn replicas
        # from the primary's INFO, every 10 s): before that a failover has nowhere to go.
        for replica in self.replica_ports:
            self._wait_for("the replicas' sync",
                           lambda replica=replica: "master_link_status:up" in cli(replica, "info", "replication"))
            for port in self.sentinel_ports:
                self._wait_for("the Sentinels to see the replicas",
                               lambda port=port, replica=replica: str(replica) in cli(port, "sentinel", "replicas",
                                                                                      MASTER))

    @staticmethod
    def _wait_for(what: str, ready, timeout_s: float = 60.0) -> None:
        give_up_at = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < give_up_at, f"no {what} within {timeout_s} s"
            time.sleep(0.2)

    def _server(self, name: str, port: int, *extra: str) -> None:
        (self.directory / name).mkdir()
        server = RedisServer(self.directory / name, port,
                             extra_args=("--repl-diskless-sync-delay", "0", *cluster_redis_args(), *extra))
        server.start()
        self.servers[name] = server

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def kill(self, name: str) -> None:
        self.servers[name].stop(signal.SIGKILL)

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10).stdout
