"""The router's one round trip, Store.create_or_advance, against the real Redis: it creates a record,
or moves on the one the api wrote `queued`, or answers what a redelivery, a duplicate or another
body under the same id is, with one event per state change and one arrival per job; and the job
state machine's ranks, which transition.lua gets from shared/schemas.py, are the ones it follows."""

from __future__ import annotations

import asyncio
from importlib import resources

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.outcome import Applied
from shared.policies import steps
from shared.schemas import STATE_RANKS, TERMINAL_RANK, TERMINAL_STATES, Job, JobState, state_rank
from shared.store import Change, Store, Upsert
from shared.store.transition import SOURCE
from tests.helpers import make_settings, namespace
from tests.stack import running_stack

pytestmark = pytest.mark.integration

SLO_S = 60.0
ROUTED = {"tier": "light", "router_score": 0.25, "plan_version": 3}


def queued(job: Job) -> Change:
    """What the api writes after the broker's confirm (services/api: queued_record)."""
    return Change(job.job_id, JobState.queued, job.record_fields(job.effective_deadline(SLO_S)), create=True,
                  detail="accepted by the api")


def routing(job: Job, redelivered: bool = False, state: JobState = JobState.routed) -> Change:
    """What the router asks of the store (services/router.py: route)."""
    outcome = ROUTED if state is JobState.routed else {"error": "408 Expired: deadline passed before routing"}
    return Change(job.job_id, state, {**job.record_fields(job.effective_deadline(SLO_S)), **outcome},
                  passing=(JobState.queued,), only_from=steps.rerouting_states(redelivered))


async def upsert(store: Store, job: Job, redelivered: bool = False, state: JobState = JobState.routed):
    return await store.create_or_advance(routing(job, redelivered, state), steps.same_job_fields(job))


async def events_of(store: Store, job_id: str) -> list[str]:
    return [event["state"] for _, event in await store.read_events() if event["job_id"] == job_id]


async def test_a_first_delivery_creates_the_record_with_the_states_on_the_way():
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse", tenant="acme", metadata={"k": 1})
        result = await upsert(store, job)
        assert (result.result, result.before, result.written) == (Upsert.created, None, True)
        record = await store.get(job.job_id)
        assert record.state is JobState.routed and record.tier == "light" and record.router_score == 0.25
        assert [t.state for t in record.history] == [JobState.queued, JobState.routed]
        assert await events_of(store, job.job_id) == ["queued", "routed"]
        assert await store.arrivals() == 1
        assert steps.recorded_job(record, job, SLO_S)


async def test_the_apis_queued_record_is_moved_on_in_the_same_call():
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse", tenant="acme", slo_s=30.0)
        assert (await store.apply(queued(job))).applied
        api_deadline = (await store.get(job.job_id)).deadline
        result = await upsert(store, job)
        assert (result.result, result.before) == (Upsert.advanced, JobState.queued)
        record = await store.get(job.job_id)
        assert record.state is JobState.routed and record.plan_version == 3 and record.deadline == api_deadline
        assert [t.state for t in record.history] == [JobState.queued, JobState.routed]
        assert await events_of(store, job.job_id) == ["queued", "routed"]  # one event per state change
        assert await store.arrivals() == 1  # the api's `queued` only: the advance records no second one


async def test_a_redelivery_gets_the_recorded_routing_and_writes_nothing():
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse")
        await upsert(store, job)
        again = await store.create_or_advance(
            Change(job.job_id, JobState.routed, {**job.record_fields(job.effective_deadline(SLO_S)), "tier": "heavy",
                                                 "router_score": 0.9}, passing=(JobState.queued,),
                   only_from=steps.rerouting_states(True)), steps.same_job_fields(job))
        assert (again.result, again.before, again.written) == (Upsert.recorded, JobState.routed, False)
        assert again.record.tier == "light" and again.record.router_score == 0.25
        duplicate = await upsert(store, job, redelivered=False)  # not redelivered: served already
        assert (duplicate.result, duplicate.before) == (Upsert.refused, JobState.routed)
        record = await store.get(job.job_id)
        assert record.tier == "light" and len(record.history) == 2
        assert await events_of(store, job.job_id) == ["queued", "routed"] and await store.arrivals() == 1


@pytest.mark.parametrize("later", [JobState.generating, JobState.judging, JobState.done, JobState.failed])
async def test_a_record_further_on_is_left_alone(later):
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse")
        await upsert(store, job)
        assert (await store.apply(Change(job.job_id, later, {"tier": "light"}, owner="w/1"))).applied
        for redelivered in (False, True):
            result = await upsert(store, job, redelivered)
            assert (result.result, result.before, result.record) == (Upsert.refused, later, None)
            assert (await upsert(store, job, redelivered, JobState.expired)).result is Upsert.refused
        record = await store.get(job.job_id)
        assert record.state is later and len(record.history) == 3
        assert await events_of(store, job.job_id) == ["queued", "routed", later.value]


async def test_a_cancel_before_the_router_wins_and_nothing_is_routed():
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse")
        await store.apply(queued(job))
        cancel = Change(job.job_id, JobState.failed, {"error": "cancelled"}, only_from=(JobState.queued,))
        assert (await store.apply(cancel)).applied
        result = await upsert(store, job)
        assert (result.result, result.before) == (Upsert.refused, JobState.failed)
        assert (await store.get(job.job_id)).state is JobState.failed
        # ... and a cancel after it is refused by its own guard (the api's DELETE: queued only).
        other = Job(prompt="routed first")
        await store.apply(queued(other))
        await upsert(store, other)
        late = await store.apply(Change(other.job_id, JobState.failed, {"error": "cancelled"},
                                        only_from=(JobState.queued,)))
        assert late.result is Applied.guarded and (await store.get(other.job_id)).state is JobState.routed


async def test_another_body_under_the_id_is_sent_back_not_written():
    async with namespace(make_settings()) as (_, store):
        victim = Job(prompt="the victim's prompt", tenant="acme")
        await store.apply(queued(victim))
        for body in (victim.model_copy(update={"prompt": "another prompt"}),
                     victim.model_copy(update={"tenant": None}),
                     victim.model_copy(update={"metadata": {"k": "v"}}),
                     victim.model_copy(update={"submitted_at": victim.submitted_at + 5})):
            result = await upsert(store, body)
            assert (result.result, result.before, result.written) == (Upsert.differs, JobState.queued, False)
            assert result.record.prompt == victim.prompt and result.record.tenant == "acme"
            assert not steps.recorded_job(result.record, body, SLO_S)
        record = await store.get(victim.job_id)
        assert record.state is JobState.queued and len(record.history) == 1
        assert await events_of(store, victim.job_id) == ["queued"]


async def test_the_byte_check_implies_recorded_job():
    """The store moves a record on without the caller's look only when same_job_fields hold what
    the body writes: every body it moves on must pass steps.recorded_job, and the same body must
    be moved on (the check is not so strict that the one round trip is never taken)."""
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse", tenant="acme", metadata={"a": 1, "b": "x"}, slo_s=30.0)
        bodies = [job, job.model_copy(update={"slo_s": None}), job.model_copy(update={"slo_s": 31.0}),
                  job.model_copy(update={"deadline": job.submitted_at + 10}), job.model_copy(update={"seed": 7}),
                  job.model_copy(update={"metadata": {"b": "x", "a": 1}}),
                  job.model_copy(update={"submitted_at": job.submitted_at + 1e-4}),
                  job.model_copy(update={"metadata": {"a": 1.0, "b": "x"}})]
        for index, body in enumerate(bodies):
            recorded = job.model_copy(update={"job_id": f"{job.job_id}-{index}"})
            body = body.model_copy(update={"job_id": recorded.job_id})
            await store.apply(queued(recorded))
            before = await store.get(recorded.job_id)
            result = await upsert(store, body)
            assert result.result in (Upsert.advanced, Upsert.differs), (index, result)
            if result.result is Upsert.advanced:
                assert steps.recorded_job(before, body, SLO_S), index
            assert (result.result is Upsert.advanced) == (index in (0, 1, 4)), index


async def test_an_expired_job_is_recorded_expired_and_not_counted():
    async with namespace(make_settings()) as (_, store):
        late = Job(prompt="too late")
        assert (await upsert(store, late, state=JobState.expired)).result is Upsert.created
        record = await store.get(late.job_id)
        assert [t.state for t in record.history] == [JobState.queued, JobState.expired] and record.error
        assert await store.arrivals() == 0
        queued_first = Job(prompt="queued, then too late")
        await store.apply(queued(queued_first))
        result = await upsert(store, queued_first, state=JobState.expired)
        assert (result.result, result.before) == (Upsert.advanced, JobState.queued)
        assert (await store.get(queued_first.job_id)).state is JobState.expired


# --- the ranks -----------------------------------------------------------------------------------------

def test_every_state_has_a_rank_and_terminal_ones_the_last():
    ranked = {name.split(":")[0] for name in STATE_RANKS}
    assert ranked == {state.value for state in JobState}
    assert {name for name, rank in STATE_RANKS.items() if rank == TERMINAL_RANK} == {s.value for s in TERMINAL_STATES}
    assert max(STATE_RANKS.values()) == TERMINAL_RANK


def test_the_script_takes_its_ranks_from_the_schemas():
    lua = resources.files("shared.store").joinpath("transition.lua").read_text()
    assert "local RANK" not in lua and "TERMINAL_RANK =" not in lua  # defined once, in Python
    assert SOURCE.endswith(lua)
    for name, rank in STATE_RANKS.items():
        assert f"['{name}'] = {rank}" in SOURCE.split("\n")[0]


def _expected(before: str, after: str) -> Applied:
    """What the script must answer for a change from rank key `before` to `after` (no owner), by
    the Python ranks: only forward, the same rank only for a re-route or a claim; terminal is final."""
    old, new = STATE_RANKS[before], STATE_RANKS[after]
    if old == TERMINAL_RANK:
        return Applied.refused
    state = after.split(":")[0]
    if new > old or (new == old and state in ("routed", "generating")):
        return Applied.applied
    return Applied.stale


def _split(name: str) -> tuple[JobState, str]:
    state, _, tier = name.partition(":")
    return JobState(state), tier or "light"


async def test_the_script_follows_the_python_ranks_for_every_pair_of_states():
    async with namespace(make_settings()) as (_, store):
        names = list(STATE_RANKS)
        for i, before in enumerate(names):
            for j, after in enumerate(names):
                job_id = f"r{i}-{j}"
                state, tier = _split(before)
                assert (await store.apply(Change(job_id, state, {"tier": tier}, create=True))).applied
                new_state, new_tier = _split(after)
                assert state_rank(new_state, new_tier) == STATE_RANKS[after]
                outcome = await store.apply(Change(job_id, new_state, {"tier": new_tier}))
                assert outcome.result is _expected(before, after), (before, after, outcome)


# --- the router's round trips ---------------------------------------------------------------------------

async def test_the_router_records_a_job_the_api_queued_in_one_round_trip():
    """The api wrote `queued`; the router's calls to Redis that name the job, until it is routed, are
    one (they were three: a refused create, a read of the record and its history, a write)."""
    settings = make_settings(slo_s=SLO_S)
    async with running_stack(settings, services=("controller", "router")) as stack:
        job = Job(prompt="a lighthouse", tenant="acme")
        await stack.store.apply(queued(job))
        router_store = stack.services["router"].store
        call, calls = router_store._call, []

        async def counting(function, *args, **kwargs):
            calls.append(repr((args, kwargs)))
            return await call(function, *args, **kwargs)

        router_store._call = counting  # type: ignore[method-assign]
        try:
            await stack.client.submit(job)
            for _ in range(500):
                if (await stack.store.get(job.job_id)).state is JobState.routed:
                    break
                await asyncio.sleep(0.02)
        finally:
            router_store._call = call  # type: ignore[method-assign]
        assert (await stack.store.get(job.job_id)).state is JobState.routed
        assert len([c for c in calls if job.job_id in c]) == 1, calls


class ReplyLost:
    """The transition script with its first reply lost: Redis runs the call, then the connection is
    cut before the answer comes back (Redis restarted under it), so Store._call sends it again."""

    def __init__(self, script) -> None:
        self.script, self.cuts = script, 1
        self.sha = script.sha

    async def __call__(self, *args, **kwargs):
        reply = await self.script(*args, **kwargs)
        if self.cuts:
            self.cuts -= 1
            raise RedisConnectionError("Connection closed by server.")
        return reply


async def test_a_routing_sent_again_after_its_reply_was_lost_is_answered_as_applied():
    """The job the compose fault run lost: the router's `routed` was written, its reply lost in a
    Redis restart, and the store's retry was refused as a duplicate (acked, never published)."""
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse", tenant="acme")
        assert (await store.apply(queued(job))).applied
        store._transition = ReplyLost(store._transition)
        result = await upsert(store, job)
        assert store._transition.cuts == 0  # the reply was lost once, and the call was sent again
        assert (result.result, result.before, result.written) == (Upsert.advanced, JobState.queued, True)
        assert await events_of(store, job.job_id) == ["queued", "routed"]  # applied once
        assert (await upsert(store, job)).result is Upsert.refused  # a real duplicate still is one


async def test_a_terminal_step_sent_again_after_its_reply_was_lost_is_answered_as_applied():
    async with namespace(make_settings()) as (_, store):
        job = Job(prompt="a lighthouse", tenant="acme")
        await upsert(store, job)
        store._transition = ReplyLost(store._transition)
        assert await store.transition(job.job_id, JobState.done, image=b"\x89PNG", model="m")
        assert await events_of(store, job.job_id) == ["queued", "routed", "done"]
        assert not await store.transition(job.job_id, JobState.done, image=b"\x89PNG", model="m")
