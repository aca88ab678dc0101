"""What a service does with a delivery, given what the store says about its job: the rules that
make every step crash-consistent. Each hop (router -> tier -> judge -> heavy) stores its result,
then publishes the next hop's message, then acks; a crash between any two of those leaves the
message to be delivered again, and these rules decide what the redelivery does:

- the step's result is not stored yet: do the step (a claim held by a worker that died passes on);
- the result is stored but the next hop may not have been published: publish it again (the next
  hop is idempotent), then ack;
- a later step owns the job, or it is terminal: ack, changing nothing;
- a live worker is doing this very step: hold the message and look again later (acking it would
  lose the job if that worker then died; generating it would do the work twice).

Pure functions: the services and the tests call them without a broker."""

from __future__ import annotations

import functools
from enum import StrEnum

from shared.outcome import Applied, Outcome
from shared.schemas import Job, JobRecord, JobState, Tier

# A delivery whose claim is held by a live worker waits this long before it is looked at again.
# The claim passes on at the latest when the holder's liveness key expires (3 heartbeats).
RECHECK_S = 1.0


class Next(StrEnum):
    work = "work"  # do this step: generate, or judge
    hand_on = "hand_on"  # the step's result is stored: publish the next hop again, then ack
    ack = "ack"  # nothing left for this message: ack it
    wait = "wait"  # a live worker holds the claim: hold the message, look again in RECHECK_S
    no_record = "no_record"  # the record is gone (TTL, a Redis that lost its data): the job fails


def after_claim(tier: Tier, outcome: Outcome) -> Next:
    """A worker tried to claim `generating` for its tier."""
    if outcome.result is Applied.applied:
        return Next.work
    if outcome.result is Applied.missing:
        return Next.no_record
    if outcome.result is Applied.busy:
        return Next.wait
    # Refused (terminal) or stale (a later step). The light worker's result is `judging`: the
    # judge's task may never have been published, so the light worker publishes it again.
    if tier is Tier.light and outcome.before is JobState.judging:
        return Next.hand_on
    return Next.ack


def after_store(tier: Tier, outcome: Outcome) -> Next:
    """A worker stored its result (light: the light image and `judging`; heavy: `done`)."""
    if outcome.result is Applied.applied:
        return Next.hand_on if tier is Tier.light else Next.ack
    if outcome.result is Applied.missing:
        return Next.no_record
    # Someone stored this step's result first (a duplicate delivery that raced this one).
    if tier is Tier.light and outcome.before is JobState.judging:
        return Next.hand_on
    return Next.ack


def before_judging(state: JobState | None) -> Next:
    """The judge reads the job's state before scoring: a verdict is drawn once, and a
    redelivered judge task reuses the stored one instead of drawing again."""
    if state is None:
        return Next.no_record
    if state is JobState.judging:
        return Next.work
    if state is JobState.escalated:
        return Next.hand_on  # escalated, but the heavy task may not have been published
    return Next.ack  # the heavy tier has it, or it is terminal (or out of order: nothing to do)


def after_verdict(outcome: Outcome, escalated: bool) -> Next:
    """The judge stored (or tried to store) its verdict."""
    if outcome.result is Applied.applied:
        return Next.hand_on if escalated else Next.ack
    if outcome.result is Applied.missing:
        return Next.no_record
    # Another delivery stored a verdict first: follow the stored one.
    if outcome.before is JobState.escalated:
        return Next.hand_on
    return Next.ack


def rerouting(state: JobState | None, redelivered: bool) -> bool:
    """The router found a record for an ingress job: route it again only when an earlier router
    stopped before its publish was acked (a redelivery of a job still `routed`, or `queued`);
    otherwise the id was served already and this is a duplicate."""
    return state is JobState.queued or (redelivered and state is JobState.routed)


def same_job(record_prompt: str, record_submitted_at: float | None, prompt: str, submitted_at: float) -> bool:
    """Whether a message describes the job a record holds, so that a dead letter may fail it: a
    message that only carries another job's id (anybody can write any id) must not."""
    return record_prompt == prompt and record_submitted_at is not None and \
        abs(record_submitted_at - submitted_at) < 1e-3


def recorded_job(record: JobRecord, job: Job, default_slo_s: float) -> bool:
    """Whether a message's job (its tenant already the one its sender may act for) is the job a
    record was written for: the same prompt and submit time (same_job), tenant and metadata, and
    deadline where the job sets one (otherwise the record's, from the same default SLO). The router
    routes a recorded id, and the controller fails one from a dead letter, only then. A record keeps
    no seed, size or negative prompt: those cannot be compared, and no other tenant can reach them
    (its tenant differs)."""
    if not same_job(record.prompt, record.submitted_at, job.prompt, job.submitted_at):
        return False
    if record.tenant != job.tenant or record.metadata != job.metadata:
        return False
    if job.deadline is None and job.slo_s is None:
        return True
    return record.deadline is not None and abs(record.deadline - job.effective_deadline(default_slo_s)) < 1e-3


@functools.cache
def rerouting_states(redelivered: bool) -> tuple[JobState, ...]:
    """The states a recorded job may be routed from (rerouting), for the store to check: two
    answers in all, worked out once rather than for every message the router takes."""
    return tuple(state for state in JobState if rerouting(state, redelivered))


def same_job_fields(job: Job) -> tuple[str, ...]:
    """The record's fields that recorded_job compares (the deadline only where the job sets
    one): when the record holds them exactly as this job writes them, it is this job, and the
    store moves it on without sending it back (tests/integration/test_store_upsert.py checks that
    this stays a sufficient condition of recorded_job)."""
    deadline = ("deadline",) if job.deadline is not None or job.slo_s is not None else ()
    return ("prompt", "submitted_at", "tenant", "metadata", *deadline)
