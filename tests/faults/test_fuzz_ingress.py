"""Property-based fuzzing of the ingress: hypothesis draws hostile messages (random bytes, wrong
types, missing and unknown fields, huge and empty prompts, control characters, absurd sizes,
non-finite and absurd times, duplicate ids, ids that name another job's Redis keys), they go to
the real services, and every one ends dead-lettered or as a clear terminal record, while the
services keep consuming. Then ids aimed at a served job's keys (`X:history`, `X:light`, ...) and
NaN/Infinity/1e308 times, explicitly: none of them touches job X."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.client import Client
from shared.errors import InvalidJob
from shared.schemas import Job, JobState, job_id_of, parse_message
from tests.faults.harness import fault_settings
from tests.faults.processes import cluster

pytestmark = [pytest.mark.integration]

FUZZ_IDS = st.sampled_from([f"fuzz-{index}" for index in range(40)])  # few ids: duplicates happen
# Ids that would name another job's keys (`<ns>:job:<id>:history`, `<ns>:image:<id>:light`) or that
# only Python's `$` accepts (a trailing newline): refused, dead-lettered, no record written.
KEY_IDS = st.sampled_from([f"fuzz-{index}{suffix}" for index in range(3)
                           for suffix in (":history", ":light", "b:light", "\n")])
IDS = st.one_of(FUZZ_IDS, FUZZ_IDS, FUZZ_IDS, KEY_IDS)
# No valid time in the past: that job would be `expired`, which is not what this test checks.
TIMES = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 0, -1, 100.0, 5e9, "nan"])
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
    "deadline": st.one_of(TIMES, st.just(4102444800.0)),  # json writes NaN and Infinity as such
    "submitted_at": TIMES,
    "steps": st.integers(),  # not a field: unknown
}


@st.composite
def job_like(draw) -> bytes:
    fields = draw(st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.none(), max_size=5))
    body = {name: draw(FIELD_VALUES[name]) for name in fields}
    body["job_id"] = draw(IDS)
    return json.dumps(body).encode()  # json, not orjson: it writes integers of any size


SIMPLE_PROMPTS = st.text(alphabet="abcdefgh ", min_size=3, max_size=40).filter(str.strip)
MESSAGES = st.one_of(st.binary(max_size=200), job_like(), job_like(),
                     st.builds(lambda p, i: json.dumps({"job_id": i, "prompt": p}).encode(), SIMPLE_PROMPTS, IDS),
                     st.builds(lambda p, i: json.dumps({"job_id": i, "prompt": p}).encode(), SIMPLE_PROMPTS, FUZZ_IDS))


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
            await aim_at_another_jobs_keys(client)
            assert all(child.process.poll() is None for child in running.children.values()), "a service died"
    finally:
        await client.close()


KEY_SUFFIXES = [":history", ":light", "b:light", ":image", "\n"]
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e308", b"1e999", b"-1e308"]


async def aim_at_another_jobs_keys(client: Client) -> None:
    """Job X is served; then messages whose ids name X's keys (`X:history` is X's history list,
    `X:light`'s image would be X's light image), and messages with NaN, Infinity or 1e308 times.
    Each is dead-lettered; one with a valid id of its own ends `failed` (422) at its own key; job X
    keeps its record, its history and its images."""
    x = Job(job_id=f"keys-{uuid.uuid4().hex[:12]}", prompt="a red bicycle, whose keys are aimed at")
    await client.submit(x)
    served = await client.wait(x.job_id, 60)
    assert served is not None and served.state is JobState.done, served
    image, light_image = await client.image(x.job_id), await client.store.get_image(x.job_id, variant="light")
    assert image

    aimed = [x.job_id + suffix for suffix in KEY_SUFFIXES]
    bodies = [json.dumps({"job_id": job_id, "prompt": "a red bicycle"}).encode() for job_id in aimed]
    timed: dict[str, bytes] = {}  # their own valid ids: raw bytes, orjson cannot write NaN
    for field in (b"deadline", b"submitted_at"):
        for index, value in enumerate(NON_FINITE):
            job_id = f"{x.job_id}-{field.decode()}-{index}"
            timed[job_id] = b'{"job_id": "%s", "prompt": "a red bicycle", "%s": %s}' % (job_id.encode(), field, value)
    assert not any(is_valid(body) for body in bodies + list(timed.values()))
    assert not any(job_id_of(body) for body in bodies)
    assert all(job_id_of(body) == job_id for job_id, body in timed.items())

    dead = client.bus.queues.dead
    dead_before = await client.bus.depth(dead)
    for body in bodies + list(timed.values()):
        await client.bus.publish(client.bus.queues.requests, body)
    for job_id in timed:
        record = await client.wait(job_id, 60)
        assert record is not None and record.state is JobState.failed, (job_id, record)
        assert record.error.startswith("422 InvalidJob"), record.error
    expected = len(bodies) + len(timed)
    for _ in range(300):  # the aimed ids write no record: wait for their dead letters
        if await client.bus.depth(dead) - dead_before >= expected:
            break
        await asyncio.sleep(0.1)
    assert await client.bus.depth(dead) - dead_before == expected

    assert await client.status(x.job_id) == served  # record and history (`X:history`) untouched
    assert await client.image(x.job_id) == image
    assert await client.store.get_image(x.job_id, variant="light") == light_image  # `X:light` wrote no image
    for job_id in aimed:
        if not job_id.endswith(":history"):  # that key is X's history list, read above
            assert await client.status(job_id) is None, job_id
