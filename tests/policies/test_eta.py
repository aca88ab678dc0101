"""The ETA on the plan's queue model (shared/policies/eta.py)."""

from __future__ import annotations

import pytest

from shared.policies.eta import TierModel, eta_s
from shared.schemas import JobState

TIER = TierModel(batch=4, gpus=2, batch_s=2.0)  # 8 jobs every 2 s


@pytest.mark.parametrize(("position", "expected"), [
    (0, 1.0 + 2.0),  # half the batch in flight, then its own
    (7, 1.0 + 2.0),  # the 8th in line: still the first round (two GPUs of 4)
    (8, 1.0 + 4.0),  # the 9th: the second round
    (23, 1.0 + 6.0),
])
def test_a_waiting_job_waits_for_the_rounds_ahead_of_it(position: int, expected: float) -> None:
    assert eta_s(JobState.routed, TIER, position=position) == pytest.approx(expected)
    assert eta_s(JobState.escalated, TIER, position=position) == pytest.approx(expected)


def test_the_eta_grows_with_the_line_and_shrinks_with_gpus_and_batches() -> None:
    etas = [eta_s(JobState.routed, TIER, position=p) for p in range(40)]
    assert etas == sorted(etas)
    more = TierModel(batch=4, gpus=4, batch_s=2.0)
    assert all(eta_s(JobState.routed, more, position=p) <= eta_s(JobState.routed, TIER, position=p)
               for p in range(40))


def test_a_running_job_has_the_rest_of_its_batch() -> None:
    assert eta_s(JobState.generating, TIER, step=7, steps=28) == pytest.approx(2.0 * 21 / 28)
    assert eta_s(JobState.generating, TIER, step=28, steps=28) == 0.0
    assert eta_s(JobState.generating, TIER) == pytest.approx(3.0)  # claimed, behind the GPU's batch
    assert eta_s(JobState.generating, TIER, step=0, steps=28) == pytest.approx(3.0)


@pytest.mark.parametrize("state", [JobState.queued, JobState.judging, JobState.done, JobState.cancelled])
def test_no_eta_where_no_tier_is_waited_for(state: JobState) -> None:
    assert eta_s(state, TIER, position=0) is None


def test_no_eta_without_gpus_or_batch_times() -> None:
    assert eta_s(JobState.routed, TierModel(batch=4, gpus=0, batch_s=2.0), position=0) is None
    assert eta_s(JobState.routed, TierModel(batch=4, gpus=1, batch_s=0.0), position=0) is None
    assert eta_s(JobState.routed, TIER, position=None) is None
