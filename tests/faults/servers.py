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

    def __init__(self, directory: Path, port: int, dist_port: int) -> None:
        self.directory, self.port, self.dist_port = directory, port, dist_port
        (directory / "home").mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
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
