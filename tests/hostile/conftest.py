"""The hostile-tenant suite (issue 29): every test under tests/hostile is marked `hostile`, so
`make test` (-m "not slow and not hostile") leaves it out and `make test-hostile`
(scripts/hostile.py: `pytest -m hostile tests/hostile`, then the fairness run) runs it. The case
files need no marker of their own: a new file here is in the suite by where it lives."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent.resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the items of this folder only: a conftest's collection hook sees every item of the
    session, those of other folders included."""
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.hostile)
