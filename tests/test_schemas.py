import json
from pathlib import Path

import pytest

from shared.errors import InvalidJob
from shared.schemas import Job, JobState, Plan, Task, Tier, job_id_of, parse_message

REPO = Path(__file__).resolve().parent.parent


def test_job_defaults_and_deadline():
    job = Job(prompt="a red bicycle", submitted_at=100.0)
    assert len(job.job_id) == 32 and job.width == 512
    assert job.effective_deadline(default_slo_s=60) == 160.0
    assert Job(prompt="x", submitted_at=100.0, slo_s=5).effective_deadline(60) == 105.0
    assert Job(prompt="x", submitted_at=100.0, deadline=130.0).effective_deadline(60) == 130.0


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
    task = Task(job=job, deadline=1.0, tier=Tier.light)
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
    assert {s for s in JobState if s.terminal} == {JobState.done, JobState.failed, JobState.expired}


def test_exported_json_schema_is_current():
    exported = json.loads((REPO / "docs" / "job.schema.json").read_text())
    assert exported == json.loads(json.dumps(Job.model_json_schema()))
