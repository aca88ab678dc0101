"""The public import of hadis for other Python backends:

    from hadis import Client, Job, submit_and_wait

    record, png = submit_and_wait(Job(prompt="a red bicycle"), timeout_s=60)

The code itself lives in `shared` and `services`, the repository's layout (docs/architecture.md)
that every import uses; this package re-exports what a caller needs under a name no other project
uses, and carries the data the commands read (`hadis/profiles`, found with importlib.resources).
The names load on first use, so `import hadis` for that data stays cheap and cannot cycle back into
`shared`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.client import Client, submit_and_wait
    from shared.schemas import Job, JobRecord, JobState
    from shared.settings import Settings

__all__ = ["Client", "Job", "JobRecord", "JobState", "Settings", "submit_and_wait"]

_HOMES = {
    "Client": "shared.client",
    "submit_and_wait": "shared.client",
    "Job": "shared.schemas",
    "JobRecord": "shared.schemas",
    "JobState": "shared.schemas",
    "Settings": "shared.settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hadis' has no attribute {name!r}")
    check_shared()
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def check_shared() -> None:
    """`shared` is a common name: when another project's package of that name comes first on
    sys.path (or overwrote ours on install), say so, instead of a bare "No module named shared.client"."""
    import shared

    if getattr(shared, "DISTRIBUTION", None) != "hadis":
        where = list(getattr(shared, "__path__", [])) or getattr(shared, "__file__", None)
        raise ImportError(f"the `shared` package at {where} is not hadis's: another project's `shared` comes first "
                          "on sys.path or replaced it. Install hadis in a virtualenv of its own (README: Installing).")
