"""Where a job is, in time: its ETA on the queue model the controller plans with (a tier serves
`gpus` batches of `batch` jobs at once, each taking the profile's batch time: BatchTimes), from
what the store knows of it (its place in its tier's waiting line, or its batch's step). Pure: the
api calls it for GET /v1/jobs/{id} and the SSE stream; the tests call it without a service.

The ETA is to the end of the job's *current* generation: for a job on the light tier, its light
image (the judge may then escalate it: a second wait on the heavy tier, which it shows once
`escalated`). It is an estimate, not a bound: the GPUs' batches in flight are taken as half done
(the mean of a batch met at a random moment), and the line ahead as full batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.schemas import JobState


@dataclass(frozen=True)
class TierModel:
    """The plan's queue model of one tier: its batch size, its GPUs, and a batch's seconds."""

    batch: int
    gpus: int
    batch_s: float


def eta_s(state: JobState, tier: TierModel, position: int | None = None, step: int | None = None,
          steps: int | None = None) -> float | None:
    """Seconds until the job's current generation ends, or None where the model cannot say: a
    tier with no GPU, a profile without batch times, a state that waits for no tier (queued: the
    router has not chosen one; judging; terminal).

    - waiting (`routed` or `escalated`, `position` jobs ahead in the tier's line): the batches in
      flight end (half a batch), then the line drains `batch * gpus` jobs a batch time, up to and
      including the job's own batch;
    - `generating`, with a step reported: the rest of its batch, `(steps - step) / steps` of one;
    - `generating`, not started (step 0 or none: claimed behind the batch its GPU runs): half a
      batch, then its own.
    """
    if tier.gpus < 1 or tier.batch < 1 or tier.batch_s <= 0:
        return None
    if state is JobState.generating:
        if step and steps:
            return tier.batch_s * max(steps - step, 0) / steps
        return 1.5 * tier.batch_s
    if state in (JobState.routed, JobState.escalated) and position is not None:
        rounds = math.ceil((position + 1) / (tier.batch * tier.gpus))
        return 0.5 * tier.batch_s + rounds * tier.batch_s
    return None
