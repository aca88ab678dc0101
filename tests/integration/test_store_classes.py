"""The service classes in the store (transition.lua), against the real Redis: a batch job's `queued`
is no arrival of the controller's demand (it is counted apart), its place in a waiting line is
among batch jobs only, and it is in the batch backlog by deadline from its creation to its end."""

from __future__ import annotations

import time

import pytest

from shared.policies.classes import Backlog
from shared.schemas import Job, JobState
from shared.store import Change
from tests.helpers import make_settings, namespace

pytestmark = pytest.mark.integration

SLO_S, BATCH_SLO_S = 6.0, 900.0


def created(job: Job, state: JobState = JobState.queued, passing: tuple[JobState, ...] = (),
            **extra) -> Change:
    """A record as the api (queued) or the router (queued, routed in one call) creates it."""
    deadline = job.effective_deadline(SLO_S, BATCH_SLO_S)
    return Change(job.job_id, state, {**job.record_fields(deadline), **extra}, create=True, passing=passing)


async def test_a_batch_job_is_no_interactive_arrival_and_is_counted_apart():
    async with namespace(make_settings()) as (_, store):
        jobs = [Job(prompt="a cat", priority="batch") for _ in range(5)] + [Job(prompt="a dog")]
        await store.apply_many([created(job) for job in jobs])
        assert await store.arrivals() == 1
        assert await store.batch_arrivals() == 5
        # The router's create-or-advance of a recorded batch job counts nothing again.
        change = Change(jobs[0].job_id, JobState.routed, {**jobs[0].record_fields(jobs[0].effective_deadline(
            SLO_S, BATCH_SLO_S)), "tier": "heavy"}, passing=(JobState.queued,))
        assert (await store.create_or_advance(change, ("prompt", "priority"))).written
        assert (await store.arrivals(), await store.batch_arrivals()) == (1, 5)
        assert (await store.get(jobs[0].job_id)).priority == "batch"


async def test_a_batch_job_waits_in_its_own_line():
    async with namespace(make_settings()) as (_, store):
        batch = [Job(prompt=f"b{i}", priority="batch") for i in range(3)]
        interactive = Job(prompt="now")
        for job in batch:
            await store.apply(created(job, JobState.routed, (JobState.queued,), tier="light"))
        await store.apply(created(interactive, JobState.routed, (JobState.queued,), tier="light"))
        assert await store.queue_position(interactive.job_id, "light") == 0  # no batch job ahead of it
        assert await store.queue_position(interactive.job_id, "light", "interactive") == 0
        assert await store.queue_position(batch[2].job_id, "light", "batch") == 2
        assert await store.queue_position(batch[2].job_id, "light") is None
        # Claimed: it leaves the line.
        await store.transition(batch[0].job_id, JobState.generating, model="m")
        assert await store.queue_position(batch[2].job_id, "light", "batch") == 1


async def test_the_batch_backlog_by_deadline_from_creation_to_the_end():
    async with namespace(make_settings()) as (_, store):
        now = time.time()
        soon = [Job(prompt="soon", priority="batch", deadline=now + 40) for _ in range(2)]
        later = [Job(prompt="later", priority="batch", submitted_at=now) for _ in range(3)]  # + 900 s
        past = Job(prompt="late already", priority="batch", deadline=now - 5)
        await store.apply_many([created(job) for job in [*soon, *later, Job(prompt="interactive")]])
        await store.apply(created(past))  # a deadline passed, not terminal: due at every horizon
        backlog = await store.batch_backlog(now, (30.0, 60.0, 1000.0))
        assert backlog == Backlog((30.0, 60.0, 1000.0), (1, 3, 6), 6)
        await store.transition(soon[0].job_id, JobState.done, image=b"x")
        await store.transition(past.job_id, JobState.expired, error="late")
        await store.transition(later[0].job_id, JobState.cancelled)
        assert await store.batch_backlog(now, (30.0, 60.0, 1000.0)) == Backlog((30.0, 60.0, 1000.0), (0, 1, 3), 3)
        assert (await store.batch_backlog(now)).total == 3  # the default horizons


async def test_a_batch_job_created_ended_never_joins_the_backlog_and_members_long_past_are_trimmed():
    settings = make_settings(job_ttl_s=60)
    async with namespace(settings) as (_, store):
        now = time.time()
        expired = Job(prompt="too late", priority="batch", deadline=now - 1)
        await store.apply(Change(expired.job_id, JobState.expired, expired.record_fields(now - 1), create=True,
                                 passing=(JobState.queued,)))
        assert (await store.batch_backlog(now)).total == 0 and await store.batch_arrivals() == 0
        lost = Job(prompt="lost", priority="batch", deadline=now - 120)  # more than the TTL past
        await store.apply(created(lost))
        assert (await store.batch_backlog(now)).total == 1
        await store.apply(created(Job(prompt="next", priority="batch")))  # a join trims it
        assert (await store.batch_backlog(now)).total == 1
        assert 0 < await store._redis.ttl(store.batch_due_key) <= 60
