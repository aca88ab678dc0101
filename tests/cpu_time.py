"""A pytest plugin: the CPU seconds and the wall seconds each test file costs, listed after the run
(`-p tests.cpu_time`; CI's lanes load it through PYTEST_ADDOPTS, scripts/ci.py).

Why CPU and not only --durations' wall time: CI's lanes share two cores, so a test's wall time says
as much about what ran beside it as about itself, while the CPU it burns is what slows every lane.
Counted per file, not per test: a module's services (a fixture's stack, the child processes of a
cluster) are reaped when the module's fixtures end, so their CPU lands on whichever test was last.
The count is this process's user and system time plus that of the children it waited for
(RUSAGE_CHILDREN), which covers the services, scripts and `make` targets the tests run; servers
that detach (RabbitMQ nodes, dockerd's containers) are not in it. Under pytest-xdist each worker
counts its own files and hands the counts to the controller, which lists them."""

from __future__ import annotations

import resource
import time
from collections import defaultdict

import pytest

SHOWN = 15
OUTPUT_KEY = "hadis_cpu_by_file"  # in an xdist worker's workeroutput: {file: [cpu_s, wall_s]}


def _cpu_now() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuByFile:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # file: [cpu_s, wall_s]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        cpu, wall = _cpu_now(), time.monotonic()
        yield
        counted = self.seconds[item.nodeid.split("::")[0]]
        counted[0] += _cpu_now() - cpu
        counted[1] += time.monotonic() - wall

    def pytest_sessionfinish(self) -> None:
        output = getattr(self.config, "workeroutput", None)  # set in an xdist worker only
        if output is not None:
            output[OUTPUT_KEY] = dict(self.seconds)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist's controller: a worker's counts (its files run there only, so they add up)."""
        for path, (cpu, wall) in getattr(node, "workeroutput", {}).get(OUTPUT_KEY, {}).items():
            self.seconds[path][0] += cpu
            self.seconds[path][1] += wall

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.seconds:
            return
        cpu_total = sum(cpu for cpu, _ in self.seconds.values())
        wall_total = sum(wall for _, wall in self.seconds.values())
        terminalreporter.write_sep("=", f"CPU seconds by test file, and wall (top {SHOWN} of {len(self.seconds)}; "
                                        f"{cpu_total:.0f} s of CPU, {wall_total:.0f} s of wall in all)")
        for path, (cpu, wall) in sorted(self.seconds.items(), key=lambda kv: -kv[1][0])[:SHOWN]:
            terminalreporter.write_line(f"{cpu:8.1f}s {wall:8.1f}s  {path}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CpuByFile(config), "hadis-cpu-by-file")
