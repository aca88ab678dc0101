"""The supervisor (`hadis serve all`) over real child processes: a child that keeps dying is
restarted with growing delays while the others keep running, the stack is never taken down for
it, and SIGTERM/SIGINT still stop everything with exit code 0. The backoff's constants are small
here (50 ms doubling to 400 ms) to keep the test to a few seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs `supervise` in its own process (it installs signal handlers), logging JSON lines to stdout.
DRIVER = textwrap.dedent("""
    import logging, os, sys
    import structlog
    structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout))
    from shared.policies.restarts import RestartBackoff
    from shared.supervisor import Child, supervise
    backoff = RestartBackoff(base_s=float(os.environ["BASE_S"]), cap_s=float(os.environ["CAP_S"]), stable_s=5.0)
    children = [Child("sleeper", "sleeper", {}, backoff=backoff), Child("crasher", "crasher", {}, backoff=backoff)]
    sys.exit(supervise(children, poll_s=0.01))
""")

# Appends its start time; exits at once (code 3) for its first CRASHES starts, then stays up.
CRASHER = textwrap.dedent("""
    import os, sys, time
    path = os.environ["CRASHER_LOG"]
    with open(path, "a") as f:
        f.write(f"{time.monotonic()}\\n")
    with open(path) as f:
        starts = len(f.readlines())
    if starts <= int(os.environ["CRASHES"]):
        sys.exit(3)
    time.sleep(600)
""")

# Appends its pid and stays up.
SLEEPER = textwrap.dedent("""
    import os, time
    with open(os.environ["SLEEPER_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(600)
""")


class Run:
    def __init__(self, tmp_path: Path, base_s: float, cap_s: float, crashes: int) -> None:
        (tmp_path / "crasher.py").write_text(CRASHER)
        (tmp_path / "sleeper.py").write_text(SLEEPER)
        self.crasher_log, self.sleeper_log = tmp_path / "crasher.log", tmp_path / "sleeper.log"
        self.output = tmp_path / "supervisor.log"
        python_path = os.pathsep.join(filter(None, [str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": python_path, "BASE_S": str(base_s), "CAP_S": str(cap_s),
               "CRASHES": str(crashes), "CRASHER_LOG": str(self.crasher_log), "SLEEPER_LOG": str(self.sleeper_log)}
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)

    def lines(self, path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    def events(self, name: str | None = None) -> list[dict]:
        events = []
        for line in self.output.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return [event for event in events if name is None or event["event"] == name]

    def wait_for(self, condition, timeout_s: float = 20.0) -> None:
        give_up_at = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, f"the supervisor exited: {self.output.read_text()}"
            assert time.monotonic() < give_up_at, f"timed out; supervisor log:\n{self.output.read_text()}"
            time.sleep(0.02)

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture
def runs():
    started: list[Run] = []
    yield started
    for run in started:  # a failed test leaves nothing running
        if run.process.poll() is None:
            run.stop(signal.SIGTERM)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_that_keeps_dying_is_restarted_with_backoff_while_the_others_run(tmp_path, runs):
    run = Run(tmp_path, base_s=0.05, cap_s=0.4, crashes=8)
    runs.append(run)
    run.wait_for(lambda: len(run.lines(run.crasher_log)) == 9)  # 8 deaths, then it stays up
    time.sleep(0.3)
    assert run.process.poll() is None, "the supervisor gave up"
    assert len(run.lines(run.crasher_log)) == 9, "the recovered child was restarted again"
    sleeper_pids = [int(pid) for pid in run.lines(run.sleeper_log)]
    assert len(sleeper_pids) == 1 and alive(sleeper_pids[0]), "the other child was not left alone"

    assert run.stop(signal.SIGTERM) == 0
    assert not alive(sleeper_pids[0])

    delays = [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]
    died = run.events("child_died")
    assert [event["child"] for event in died] == ["crasher"] * 8
    assert [event["code"] for event in died] == [3] * 8
    assert [event["deaths"] for event in died] == list(range(1, 9))
    assert [event["restart_in_s"] for event in died] == pytest.approx(delays)
    keeps_dying = run.events("child_keeps_dying")
    assert [(event["deaths"], event["level"]) for event in keeps_dying] == [(n, "warning") for n in range(4, 9)]
    assert all(event["restart_in_s"] == pytest.approx(0.4) for event in keeps_dying)
    starts = [float(t) for t in run.lines(run.crasher_log)]
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), gaps  # each restart waited its delay
    assert [event["child"] for event in run.events("child_started")].count("sleeper") == 1


def test_a_stop_request_while_a_child_waits_out_its_backoff_stops_at_once(tmp_path, runs):
    run = Run(tmp_path, base_s=10.0, cap_s=10.0, crashes=1000)
    runs.append(run)
    # The sleeper's pid too: on a loaded machine the crasher died before the sleeper had written it.
    run.wait_for(lambda: run.events("child_died") and run.lines(run.sleeper_log))
    assert run.events("child_died")[0]["restart_in_s"] == 10.0
    stop_asked = time.monotonic()
    assert run.stop(signal.SIGINT) == 0
    assert time.monotonic() - stop_asked < 5, "the supervisor blocked in the backoff"
    assert len(run.lines(run.crasher_log)) == 1  # not restarted on the way out
    assert not alive(int(run.lines(run.sleeper_log)[0]))
