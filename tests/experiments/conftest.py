"""Fixtures of the experiment tests."""

from __future__ import annotations

import pytest
import structlog


@pytest.fixture(autouse=True)
def logging_kept():
    """A test that runs `hadis` (shared.cli.main) configures logging to the stderr that pytest
    captures for that test and closes after it: the tests that run later would log to a closed file."""
    config = structlog.get_config()
    yield
    structlog.configure(**config)
