"""Runs the services as child processes on one machine (`hadis serve all`, `make run`): the
controller, the router, the quality judge, the HTTP api, the webhook sender and this host's agent,
which in turn runs one worker per GPU (light or heavy, as the plan assigns). It restarts a child
that dies, with exponential backoff (shared/policies/restarts.py: 0.5 s doubling to 30 s, forgotten
after 60 s up), and never gives up on one: a child that dies because RabbitMQ or Redis is
restarting comes back when they do, and the rest of the stack keeps serving meanwhile. On
Ctrl-C/SIGTERM it stops them all gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.logging import get_logger
from shared.policies.restarts import RestartBackoff
from shared.settings import get_settings

log = get_logger(__name__)

POLL_S = 0.5
STOP_TIMEOUT_S = 40.0


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0  # restarts after a death, in all
    log_path: Path | None = None  # its stdout and stderr (appended); None: this process's
    backoff: RestartBackoff = field(default_factory=RestartBackoff)  # its deaths; the rule's constants
    started_at: float | None = None  # time.monotonic() at the last start
    restart_at: float | None = None  # dead, waiting out its backoff until then; None: not dead (or not seen)

    def start(self) -> None:
        output = open(self.log_path, "ab") if self.log_path else None
        try:
            self.process = subprocess.Popen([sys.executable, "-m", self.module], env={**os.environ, **self.env},
                                            stdout=output, stderr=subprocess.STDOUT if output else None)
        finally:
            if output:
                output.close()
        self.started_at, self.restart_at = time.monotonic(), None
        log.info("child_started", child=self.name, pid=self.process.pid)

    def died(self, now: float) -> RestartBackoff:
        """Record a death seen at `now`; the child is to be restarted at `restart_at`."""
        self.backoff = self.backoff.after_death(now, self.started_at if self.started_at is not None else now)
        self.restart_at = self.backoff.ready_at
        return self.backoff


def default_children() -> list[Child]:
    children = [
        Child("controller", "services.controller", {}),
        Child("router", "services.router", {}),
        Child("judge", "services.judge", {}),
        Child("api", "services.api", {}),
        Child("webhooks", "services.webhooks", {}),  # the jobs' webhook deliveries (docs/jobs.md, Webhooks)
        Child("agent", "services.agent", {}),  # last: its workers take the ports after its own
    ]
    base = get_settings().metrics_port
    if base is not None:
        for offset, child in enumerate(children):
            child.env["HADIS_METRICS_PORT"] = str(base + offset)
    return children


def supervise(children: list[Child], poll_s: float = POLL_S) -> int:
    """Start the children and keep them running until SIGINT/SIGTERM, then stop them all; 0.
    A dead child waits out its backoff while the others are still watched (nothing blocks)."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for child in children:
        child.start()
    while not stopping:
        time.sleep(poll_s)
        for child in children:
            if stopping:
                break
            now, restart_at = time.monotonic(), child.restart_at
            if restart_at is None:
                code = child.process.poll() if child.process else None
                if code is None:
                    continue
                backoff = child.died(now)
                restart_at = backoff.ready_at
                log.warning("child_died", child=child.name, code=code, deaths=backoff.deaths,
                            restart_in_s=round(backoff.delay_s, 3))
                if backoff.at_cap:
                    log.warning("child_keeps_dying", child=child.name, deaths=backoff.deaths,
                                restart_in_s=round(backoff.delay_s, 3))
            if now >= restart_at:
                child.restarts += 1
                child.start()
    stop_all(children)
    return 0


def stop_all(children: list[Child]) -> None:
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    give_up_at = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(give_up_at - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("child_killed", child=child.name)
            child.process.kill()
