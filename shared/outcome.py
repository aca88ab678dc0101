"""What the store did with a change of a job record: a small typed value, so the rules under
shared/policies can decide on it without importing the store (or redis)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shared.schemas import JobState


class Applied(IntEnum):
    """What the store did with a Change."""

    applied = 1
    refused = 0  # the record exists (a create), or it is terminal (a transition)
    missing = -1  # no record
    stale = 2  # the record is already at a later step (or this step's result is stored)
    busy = 3  # a live worker holds this step's claim
    no_image = 4  # promote: there is no light image to serve
    guarded = 5  # the record is not in one of the states the change may leave (Change.only_from)


@dataclass(frozen=True)
class Outcome:
    """A Change's result and the state the record had before it (None: no record)."""

    result: Applied
    before: JobState | None

    @property
    def applied(self) -> bool:
        return self.result is Applied.applied
