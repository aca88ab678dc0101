"""Property-based fuzzing of the ingress: hypothesis draws hostile messages (random bytes, wrong
types, missing and unknown fields, huge and empty prompts, control characters, absurd sizes,
duplicate ids), they go to the real services, and every one ends dead-lettered or as a clear
terminal record, while the services keep consuming."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from shared.client import Client
from shared.errors import InvalidJob
from shared.schemas import Job, JobState, job_id_of, parse_message
from tests.faults.harness import fault_settings
from shared.faults import cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IDS = st.sampled_from([f"fuzz-{index}" for index in range(40)])  # few ids: duplicates happen
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=20))
PROMPTS = st.one_of(st.text(max_size=50), st.text(min_size=1990, max_size=2100),
                    st.just(""), st.just("   "), st.text(alphabet=st.characters(max_codepoint=31), min_size=1))
FIELD_VALUES = {
    "prompt": PROMPTS,
    "negative_prompt": st.one_of(st.text(max_size=10), st.integers()),
    "seed": st.one_of(st.integers(min_value=-5, max_value=2**40), st.text(max_size=5)),
    "width": st.one_of(st.integers(min_value=-10, max_value=100_000), st.just("512")),
    "height": st.sampled_from([8, 63, 64, 512, 2048, 4096, 10**9]),
    "slo_s": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=5), SCALARS, max_size=3), st.lists(st.integers())),
    "steps": st.integers(),  # not a field: unknown
}


@st.composite
def job_like(draw) -> bytes:
    fields = draw(st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.none(), max_size=5))
    body = {name: draw(FIELD_VALUES[name]) for name in fields}
    body["job_id"] = draw(IDS)
    return json.dumps(body).encode()  # json, not orjson: it writes integers of any size


MESSAGES = st.one_of(st.binary(max_size=200), job_like(), job_like(),
                     st.builds(lambda p, i: json.dumps({"job_id": i, "prompt": p}).encode(),
                               st.text(alphabet="abcdefgh ", min_size=3, max_size=40).filter(str.strip), IDS))


def draw_messages(count: int) -> list[bytes]:
    drawn: list[bytes] = []

    @hypothesis_settings(max_examples=count, database=None, deadline=None,
                         suppress_health_check=list(HealthCheck))
    @given(MESSAGES)
    def collect(message: bytes) -> None:
        drawn.append(message)

    collect()
    return drawn


def is_valid(body: bytes) -> bool:
    try:
        parse_message(Job, body)
        return True
    except InvalidJob:
        return False


def test_hostile_ingress_ends_dead_lettered_or_terminal():
    messages = draw_messages(300)
    invalid = [body for body in messages if not is_valid(body)]
    ids = {job_id for body in messages if (job_id := job_id_of(body))}
    assert invalid and len(invalid) < len(messages), "the strategy should draw both kinds"
    asyncio.run(publish_and_check(messages, invalid, ids))


async def publish_and_check(messages: list[bytes], invalid: list[bytes], ids: set[str]) -> None:
    settings = fault_settings(time_scale=0.0)
    client = await Client.open(settings)
    try:
        async with cluster(settings, client) as running:
            dead_before = await client.bus.depth(client.bus.queues.dead)
            for body in messages:
                await client.bus.publish(client.bus.queues.requests, body)
            records = {job_id: await client.wait(job_id, 60) for job_id in ids}
            assert all(record is not None for record in records.values()), "a job never reached a terminal state"
            for record in records.values():
                assert record.state in (JobState.done, JobState.failed), record
                if record.state is JobState.failed:
                    assert record.error.startswith("422 InvalidJob"), record.error
            good = Job(prompt="after the fuzz: a red bicycle")
            await client.submit(good)
            assert (await client.wait(good.job_id, 60)).state is JobState.done
            assert await client.bus.depth(client.bus.queues.dead) - dead_before == len(invalid)
            assert all(child.process.poll() is None for child in running.children.values()), "a service died"
    finally:
        await client.close()
