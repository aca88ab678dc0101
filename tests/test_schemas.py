import json
from pathlib import Path

import pytest

from shared.errors import InvalidJob
from shared.schemas import Job, JobState, Plan, Task, Tier, job_id_of, parse_message

REPO = Path(__file__).resolve().parent.parent


T0 = 1_700_000_000.0  # a plausible Unix time (2023)


def test_job_defaults_and_deadline():
    job = Job(prompt="a red bicycle", submitted_at=T0)
    assert len(job.job_id) == 32 and job.width == 512
    assert job.effective_deadline(default_slo_s=60) == T0 + 60
    assert Job(prompt="x", submitted_at=T0, slo_s=5).effective_deadline(60) == T0 + 5
    assert Job(prompt="x", submitted_at=T0, deadline=T0 + 30).effective_deadline(60) == T0 + 30


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"not json", "Invalid JSON"),
        (b'{"seed": 1}', "prompt"),
        (b'{"prompt": "ok", "colour": "red"}', "colour"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "   "}', "blank"),
        (json.dumps({"prompt": "x" * 2001}).encode(), "prompt"),
        (b'{"prompt": "ok", "width": 100000}', "width"),
        (b'{"prompt": "ok", "height": 63}', "height"),
        (b'{"prompt": "ok\\u0000"}', "control"),
        (b'{"prompt": "ok", "job_id": "../etc/passwd"}', "job_id"),
        (b'{"prompt": "ok", "seed": -1}', "seed"),
        (b'[1, 2]', "Job"),
    ],
)
def test_bad_jobs_raise_readable_invalid_job(body, problem):
    with pytest.raises(InvalidJob) as raised:
        parse_message(Job, body)
    assert problem.lower() in str(raised.value).lower()
    assert raised.value.status == 422


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(InvalidJob, match="bytes"):
        parse_message(Job, b"{" + b" " * 70_000 + b"}")


def test_job_id_of_reads_jobs_and_tasks():
    job = Job(job_id="abc-1", prompt="x")
    task = Task(job=job, deadline=T0, tier=Tier.light)
    assert job_id_of(job.model_dump_json().encode()) == "abc-1"
    assert job_id_of(task.model_dump_json().encode()) == "abc-1"
    assert job_id_of(b'{"job_id": "abc-2", "prompt": ""}') == "abc-2"
    assert job_id_of(b"garbage") is None
    assert job_id_of(b'{"job_id": "bad id with spaces"}') is None


def test_plan_heavy_share_and_tier_accessors():
    plan = Plan(version=1, light_model="a", heavy_model="b", r=0.2, d=0.5, light_batch=4, heavy_batch=2)
    assert plan.heavy_share == pytest.approx(0.6)
    assert plan.model_for(Tier.heavy) == "b" and plan.batch_for(Tier.light) == 4


def test_terminal_states():
    assert {s for s in JobState if s.terminal} == {JobState.done, JobState.failed, JobState.expired, JobState.cancelled}


def test_exported_json_schema_is_current():
    exported = json.loads((REPO / "docs" / "job.schema.json").read_text())
    assert exported == json.loads(json.dumps(Job.model_json_schema()))


# --- The contract is bounded and job ids cannot collide (docs/jobs.md) -------------------------

JOB_X = "order-42"
HOSTILE_IDS = [
    f"{JOB_X}:history",  # would be job X's history list: <ns>:job:<X>:history
    f"{JOB_X}:light",  # its final image would be job X's light image: <ns>:image:<X>:light
    f"{JOB_X}b:light",
    "a:b",
    f"{JOB_X}\n",  # Python's `$` matches before a trailing newline
    "\nabc",
    "abc\r",
    "",
    "x" * 129,
    "order\u200b42",  # zero-width space
    "\u043erder-42",  # Cyrillic o
    "\uff4frder-42",  # fullwidth o
    "order-\u0664\u0662",  # Arabic-Indic digits
    "a b",
    "a/b",
    "../etc/passwd",
    "a*",
    "{a}",
]
GOOD_IDS = ["a", "order-42", "A.b_c-9", "x" * 128, "0123456789abcdef0123456789abcdef", "..", "-", "_"]


def job_body(**fields) -> bytes:
    return json.dumps({"prompt": "a red bicycle", **fields}).encode()


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_ids_that_could_reach_other_keys_are_refused_everywhere(job_id):
    with pytest.raises(InvalidJob, match="job_id") as raised:
        parse_message(Job, job_body(job_id=job_id))
    assert raised.value.status == 422
    with pytest.raises(InvalidJob, match="job_id"):
        parse_message(Task, json.dumps({"job": {"prompt": "x", "job_id": job_id}, "deadline": 1.7e9,
                                        "tier": "light"}).encode())
    assert job_id_of(job_body(job_id=job_id)) is None  # no failed record is written for it
    assert job_id_of(json.dumps({"job": {"job_id": job_id}}).encode()) is None
    with pytest.raises(ValueError):
        Job(job_id=job_id, prompt="x")


@pytest.mark.parametrize("job_id", GOOD_IDS + HOSTILE_IDS + [None, 42, ["a"], {"a": 1}])
def test_job_and_job_id_of_apply_one_rule(job_id):
    body = job_body(job_id=job_id)
    try:
        parsed = parse_message(Job, body).job_id == job_id
    except InvalidJob:
        parsed = False
    read = job_id_of(body)
    assert parsed == (read is not None and read == job_id) == (job_id in GOOD_IDS)


def test_valid_job_id_is_the_rule():
    from shared.schemas import valid_job_id

    assert all(valid_job_id(job_id) for job_id in GOOD_IDS)
    assert not any(valid_job_id(job_id) for job_id in HOSTILE_IDS + [None, 42, b"abc"])


def test_job_id_newline_refused_by_job_and_job_id_of():
    with pytest.raises(InvalidJob, match="job_id"):
        parse_message(Job, b'{"prompt": "x", "job_id": "abc\\n"}')
    assert job_id_of(b'{"prompt": "x", "job_id": "abc\\n"}') is None
    assert job_id_of(b'{"prompt": "x", "job_id": "abc"}') == "abc"


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1e308", b"-1e308"]
OUT_OF_WINDOW = [b"0", b"100.0", b"946684799.9", b"4102444800.1", b"5e9", b"-1", b'"nan"', b'"inf"']


@pytest.mark.parametrize("field", ["deadline", "submitted_at"])
@pytest.mark.parametrize("value", NON_FINITE + OUT_OF_WINDOW)
def test_times_are_finite_and_within_2000_to_2100(field, value):
    body = b'{"job_id": "t-1", "prompt": "x", "%s": %s}' % (field.encode(), value)
    with pytest.raises(InvalidJob, match=field) as raised:
        parse_message(Job, body)
    assert raised.value.status == 422
    assert job_id_of(body) == "t-1"  # its 422 record goes to its own key


@pytest.mark.parametrize("field", ["deadline", "submitted_at"])
@pytest.mark.parametrize("value", [946684800, 946684800.0, 1.7e9, 4102444800])
def test_times_at_the_bounds_are_accepted(field, value):
    assert getattr(parse_message(Job, job_body(**{field: value})), field) == value


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1e308", b"0", b"-1"])
def test_slo_is_finite_and_positive(value):
    with pytest.raises(InvalidJob, match="slo_s"):
        parse_message(Job, b'{"prompt": "x", "slo_s": %s}' % value)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e999", b"1e308", b"0", b"4102444800.5"])
def test_task_deadline_is_finite_and_bounded(value):
    job = Job(job_id="t-1", prompt="x").model_dump_json().encode()
    with pytest.raises(InvalidJob, match="deadline"):
        parse_message(Task, b'{"job": %s, "deadline": %s, "tier": "light"}' % (job, value))
    for bad in (float("nan"), float("inf"), 1e308, 0.0):
        with pytest.raises(ValueError):
            Task(job=Job(prompt="x"), deadline=bad, tier=Tier.light)


def test_effective_deadline_of_a_job_submitted_at_the_bound_makes_a_valid_task():
    job = Job(prompt="x", submitted_at=4102444800.0, slo_s=3600)
    deadline = job.effective_deadline(default_slo_s=60)
    assert deadline <= 4102444800.0
    assert Task(job=job, deadline=deadline, tier=Tier.heavy).deadline == deadline


@pytest.mark.parametrize("text", ["bad\u0000", "bad\u0007", "\u001b[31mred", "bad\u007f", "bad\u009b"])
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_and_negative_prompt_refuse_control_characters(field, text):
    with pytest.raises(InvalidJob, match=f"{field}.*control"):
        parse_message(Job, job_body(**{field: text}))


@pytest.mark.parametrize("text", ["", "   ", "tab\tnewline\ncr\r", "blurry, low quality", "\u00e9\u4e2d\U0001f600"])
def test_negative_prompt_may_be_empty_or_blank(text):
    assert parse_message(Job, job_body(negative_prompt=text)).negative_prompt == text


def test_prompt_allows_tab_newline_and_unicode():
    text = "line one\n\tline two\r\n\u00e9\u4e2d\U0001f600"
    assert parse_message(Job, job_body(prompt=text)).prompt == text


@pytest.mark.parametrize(
    "metadata, problem",
    [
        ({"k": "\U0001f600" * 1100}, "bytes"),  # 1,107 characters of repr, 4,4xx bytes of JSON
        ({"k": "\u00e9" * 2100}, "bytes"),
        ({"k": "a" * 4100}, "bytes"),
        ({f"k{i}": 1 for i in range(33)}, "keys"),
        ({"k" * 65: 1}, "key"),
        ({"k": "bad\u0000"}, "control"),
        ({"k": "\u001b[2J"}, "control"),
        ({"bad\u0007": 1}, "control"),
        ({"k": 2**64}, "64"),
        ({"k": -(2**63) - 1}, "64"),
        ({"k": [1, 2]}, "metadata"),
        ({"k": {"nested": 1}}, "metadata"),
    ],
)
def test_metadata_is_bounded(metadata, problem):
    with pytest.raises(InvalidJob, match="metadata") as raised:
        parse_message(Job, job_body(metadata=metadata))
    assert problem.lower() in str(raised.value).lower()


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_metadata_numbers_are_finite(value):
    with pytest.raises(InvalidJob, match="metadata"):
        parse_message(Job, b'{"prompt": "x", "metadata": {"k": %s}}' % value)


def test_metadata_within_bounds_is_accepted():
    import orjson

    big = {"k": "", "n": 2**63 - 1, "m": -(2**63), "f": 1.5, "b": True, "z": None, "t": "tab\there"}
    big["k"] = "a" * (4096 - len(orjson.dumps(big)))
    assert len(orjson.dumps(big)) == 4096 and len(repr(big)) > 4096  # JSON bytes are measured, not repr
    assert parse_message(Job, job_body(metadata=big)).metadata == big
    with pytest.raises(InvalidJob, match="metadata.*bytes"):
        parse_message(Job, job_body(metadata={**big, "k": big["k"] + "a"}))
    many = {f"{i:064d}": i for i in range(32)}
    assert parse_message(Job, job_body(metadata=many)).metadata == many
    assert parse_message(Job, job_body(metadata={"": ""})).metadata == {"": ""}


def test_env_file_is_git_ignored_but_its_example_is_not():
    import subprocess

    def ignored(path: str) -> bool:
        result = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], check=False, cwd=REPO)
        return result.returncode == 0

    assert ignored(".env")
    assert not ignored(".env.example")
