"""The services' one intake (shared/intake.py): a bad body is dead-lettered with only a missing record
written for the id it names, a stale delivery is dropped, and duplicates of a job (in the batch, or
of one claimed earlier) join that claim and are settled with it."""

from __future__ import annotations

from types import SimpleNamespace

from shared.errors import Disposition
from shared.intake import Claimed, intake, parse_or_dead_letter, parse_task
from shared.schemas import Job, JobState, Task, Tier
from shared.service import Service
from tests.fakes import FakeDelivery, FakeStore
from tests.helpers import make_settings


def service() -> Service:
    return Service("intake", make_settings(), SimpleNamespace(), FakeStore(), SimpleNamespace())  # type: ignore[arg-type]


def delivery(task: Task, **fields) -> FakeDelivery:
    return FakeDelivery(task.model_dump_json().encode(), **fields)


def task(name: str) -> Task:
    job = Job(job_id=name * 32, prompt=f"a {name}")
    return Task(job=job, deadline=job.submitted_at + 6.0, tier=Tier.light)


async def test_a_batch_is_parsed_deduplicated_and_its_bad_and_stale_deliveries_left_out():
    svc, a, b, c = service(), task("a"), task("b"), task("c")
    held = Claimed(delivery(c), c)  # claimed by an earlier batch, still being worked on
    bad = FakeDelivery(b'{"job": {"job_id": "' + b"d" * 32 + b'"}}')
    stale = delivery(b, stale=True)
    batch = [delivery(a), bad, stale, delivery(a), delivery(c), delivery(b)]
    taken = await intake(svc, batch, parse_task, held={c.job.job_id: held})
    assert [item.job_id for item in taken] == [a.job.job_id, b.job.job_id]
    assert taken[0].also == [batch[3]] and held.also == [batch[4]]
    assert bad.settled == [Disposition.dead_letter] and svc.store.failed == {"d" * 32: JobState.failed}  # type: ignore[attr-defined]
    assert stale.settled == []  # the broker has handed it out again: nothing to settle here
    await taken[0].settle(Disposition.ack)
    assert batch[0].settled == batch[3].settled == [Disposition.ack]


async def test_one_message_that_does_not_parse_is_dead_lettered_and_none_is_returned():
    svc = service()
    body = FakeDelivery(b"not json")
    assert await parse_or_dead_letter(svc, body, parse_task) is None
    assert body.settled == [Disposition.dead_letter] and svc.store.failed == {}  # type: ignore[attr-defined]
