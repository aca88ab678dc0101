"""The suite's tiers are its folders: every test is marked with its tier here, by where it lives, so
a new file is in the right tier without a marker of its own, and the Makefile selects tiers with -m.

    unit         tests/*.py, tests/policies, tests/backends, tests/experiments: no server needed
                 (a few of them talk to the machine's RabbitMQ and Redis and say so with `integration`)
    integration  tests/integration: services against the real RabbitMQ and Redis
    deploy       tests/deploy: the documented commands and artefacts (make loadtest, compose files,
                 Dockerfiles, the HTTP and shell examples)
    faults       tests/faults: kills, restarts and outages under load (make test-faults)
    hostile      tests/hostile: a hostile tenant's attacks (make test-hostile)
"""

import logging
from pathlib import Path

import pytest
import structlog

HERE = Path(__file__).parent.resolve()
TIERS = ("integration", "deploy", "faults", "hostile")


def pytest_configure(config):
    # Services log at warning level in tests; pytest shows the lines of a failing test.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )


def tier_of(path: Path) -> str:
    """The tier of a test file: the first folder under tests/ when it names a tier, else unit."""
    try:
        parts = path.resolve().relative_to(HERE).parts
    except ValueError:  # a path given outside tests/
        return "unit"
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with its tier, and runs the integration tier first (a stable sort: files stay
    whole, in their order). `make test` hands whole files to two pytest-xdist workers in this order:
    the integration files, which mostly wait on their services, start while the unit files' CPU work
    fills those waits, and the run does not end on a long stack test started last."""
    tiers = {path: tier_of(path) for path in {item.path for item in items}}  # one resolve per file
    for item in items:
        item.add_marker(getattr(pytest.mark, tiers[item.path]))
    items.sort(key=lambda item: tiers[item.path] != "integration")
