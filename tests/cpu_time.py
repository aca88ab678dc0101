"""A pytest plugin: the CPU seconds each test file costs, listed after the run (`-p tests.cpu_time`;
CI's lanes load it through PYTEST_ADDOPTS, scripts/ci.py).

Why CPU and not --durations' wall time: CI's lanes share two cores, so a test's wall time says as
much about what ran beside it as about itself, while the CPU it burns is what slows every lane.
Counted per file, not per test: a module's services (a fixture's stack, the child processes of a
cluster) are reaped when the module's fixtures end, so their CPU lands on whichever test was last.
The count is this process's user and system time plus that of the children it waited for
(RUSAGE_CHILDREN), which covers the services, scripts and `make` targets the tests run; servers
that detach (RabbitMQ nodes, dockerd's containers) are not in it."""

from __future__ import annotations

import resource
from collections import defaultdict

import pytest

SHOWN = 15


def _cpu_now() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuByFile:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        started = _cpu_now()
        yield
        self.seconds[item.nodeid.split("::")[0]] += _cpu_now() - started

    def pytest_terminal_summary(self, terminalreporter) -> None:
        total = sum(self.seconds.values())
        terminalreporter.write_sep("=", f"CPU seconds by test file (top {SHOWN} of {len(self.seconds)}; "
                                        f"{total:.0f} s in all)")
        for path, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1])[:SHOWN]:
            terminalreporter.write_line(f"{seconds:8.1f}s  {path}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CpuByFile(), "hadis-cpu-by-file")
