"""Admission at the worker: how many batches a worker commits to, and whether a job can still end
by its deadline if it joins the batch being formed. The worker service and the simulator use
this module, so that both shed the same jobs."""

from __future__ import annotations

# Batches admitted to the model at once: the one generating and the next, queued behind it on the
# model's thread. A deeper pipeline commits jobs to this GPU that an idle GPU could serve sooner.
PIPELINE_DEPTH = 2
# Deliveries a worker holds (its prefetch, in batches): the two admitted batches and one being
# collected. A larger prefetch parks jobs in a busy worker's buffer while another worker idles.
PREFETCH_BATCHES = 3
# Time a job still needs after its batch: PNG encoding, the store write and, for a light image,
# the judge. A job admitted without it would end a few milliseconds late.
HANDOFF_S = 0.1


class BatchTimer:
    """How long a batch takes on this worker: the last measurement per (model, batch size)."""

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, int], float] = {}

    def observe(self, model: str, size: int, seconds: float) -> None:
        self._seconds[(model, size)] = seconds

    def expected(self, model: str, size: int, prior_s: float = 0.0) -> float:
        """From the nearest batch size measured (scaled up linearly for a larger batch); the
        prior (the profile's figure) until this model has been measured here."""
        known = [(s, seconds) for (m, s), seconds in self._seconds.items() if m == model]
        if not known:
            return prior_s
        nearest_size, seconds = min(known, key=lambda entry: abs(entry[0] - size))
        return seconds * size / nearest_size if nearest_size < size else seconds


def ends_too_late(batch_ends_at: float, deadline: float) -> bool:
    """A job whose batch would end at `batch_ends_at` cannot be done by `deadline`."""
    return batch_ends_at + HANDOFF_S >= deadline
