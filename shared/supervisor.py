"""Runs the services as child processes on one machine (`hadis serve all`, `make run`): the
controller, the router, the quality judge and this host's agent, which in turn runs one worker
per GPU (light or heavy, as the plan assigns). It restarts a child that dies (at most
MAX_RESTARTS per child per RESTART_WINDOW_S, then gives up loudly), and on Ctrl-C/SIGTERM
stops them all gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.logging import get_logger
from shared.settings import get_settings

log = get_logger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 40.0


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    log_path: Path | None = None  # its stdout and stderr (appended); None: this process's

    def start(self) -> None:
        output = open(self.log_path, "ab") if self.log_path else None
        try:
            self.process = subprocess.Popen([sys.executable, "-m", self.module], env={**os.environ, **self.env},
                                            stdout=output, stderr=subprocess.STDOUT if output else None)
        finally:
            if output:
                output.close()
        log.info("child_started", child=self.name, pid=self.process.pid)

    def may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        self.restarts.append(now)
        return len(self.restarts) <= MAX_RESTARTS


def default_children() -> list[Child]:
    children = [
        Child("controller", "services.controller", {}),
        Child("router", "services.router", {}),
        Child("judge", "services.judge", {}),
        Child("agent", "services.agent", {}),  # last: its workers take the ports after its own
    ]
    base = get_settings().metrics_port
    if base is not None:
        for offset, child in enumerate(children):
            child.env["HADIS_METRICS_PORT"] = str(base + offset)
    return children


def supervise(children: list[Child]) -> int:
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for child in children:
        child.start()
    exit_code = 0
    while not stopping:
        time.sleep(0.5)
        for child in children:
            code = child.process.poll()
            if code is None:
                continue
            if not child.may_restart():
                log.error("child_keeps_dying", child=child.name, code=code)
                stopping, exit_code = True, 1
                break
            log.warning("child_died_restarting", child=child.name, code=code)
            child.start()
    stop_all(children)
    return exit_code


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
