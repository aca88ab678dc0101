"""Service classes at the doors, without a server (issue 31): the `priority` an images request, a
job body, the client and the command carry, and the classes an API key may ask for."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.api.keys import Caller
from shared import apikeys
from shared.cli import build_parser
from shared.client import with_priority
from shared.images_api import ApiError, ImagesRequest, from_validation, jobs_for, record_view
from shared.policies.tenancy import Limits
from shared.schemas import PRIORITIES, Job, JobRecord, JobState

LIMITS = Limits(rate=1.0, burst=1, max_active=1)


def ids(n: int):
    return iter([f"id-{i}" for i in range(n)]).__next__


def test_an_images_request_is_interactive_by_default_with_the_slo():
    (job,) = jobs_for(ImagesRequest(prompt="a fox"), "acme", 6.0, 10, ids(1), 900.0)
    assert job.priority == "interactive" and job.slo_s == 6.0


def test_a_batch_images_request_has_the_batch_objective_unless_its_model_names_one():
    (job,) = jobs_for(ImagesRequest(prompt="a fox", priority="batch"), "acme", 6.0, 10, ids(1), 900.0)
    assert job.priority == "batch" and job.slo_s == 900.0
    assert job.record_fields(job.effective_deadline(6.0, 900.0))["priority"] == "batch"
    (named,) = jobs_for(ImagesRequest(prompt="a fox", priority="batch", model="hadis-120s"), "acme", 6.0, 10,
                        ids(1), 900.0)
    assert named.slo_s == 120.0 and named.priority == "batch"
    # An alias of the default model is the class's objective too.
    (alias,) = jobs_for(ImagesRequest(prompt="a fox", priority="batch", model="dall-e-3"), "acme", 6.0, 10,
                        ids(1), 900.0)
    assert alias.slo_s == 900.0


def test_a_batch_request_is_not_streamed_and_no_id_is_made():
    made: list[int] = []

    def new_id() -> str:
        made.append(1)
        return "x"

    with pytest.raises(ApiError) as error:
        jobs_for(ImagesRequest(prompt="a fox", priority="batch", stream=True), "acme", 6.0, 10, new_id, 900.0)
    assert (error.value.status, error.value.param) == (400, "priority") and made == []


@pytest.mark.parametrize("value", ["urgent", "Batch", "", 1, None])
def test_an_unknown_priority_is_a_400_naming_it(value):
    body = {"prompt": "a fox", "priority": value}
    if value is None:  # null is the default on the OpenAI route (OpenAI's clients send nulls)
        assert ImagesRequest.model_validate(body).priority is None
        return
    with pytest.raises(ValidationError) as images_error:
        ImagesRequest.model_validate(body)
    assert from_validation(images_error.value).param == "priority"
    with pytest.raises(ValidationError) as job_error:
        Job.model_validate(body)
    assert from_validation(job_error.value).param == "priority"


def test_a_record_shows_its_class_and_an_old_one_is_interactive():
    old = JobRecord(job_id="j", state=JobState.queued, prompt="p", submitted_at=1.0)
    assert record_view(old)["priority"] == "interactive"
    batch = old.model_copy(update={"priority": "batch"})
    assert record_view(batch)["priority"] == "batch"


def test_a_key_may_use_every_class_unless_limited_and_stores_only_a_limit():
    _, both = apikeys.new_key("acme")
    assert both.classes == PRIORITIES and "classes" not in both.as_fields()  # stored as keys always were
    _, batch_only = apikeys.new_key("acme", classes=("batch",))
    assert batch_only.as_fields()["classes"] == "batch"
    assert apikeys.StoredKey.from_fields(batch_only.key_id, batch_only.as_fields()) == batch_only
    before = {"tenant": "acme", "salt": both.salt, "digest": both.digest, "created_at": "1.5"}
    assert apikeys.StoredKey.from_fields("0123456789ab", before).classes == PRIORITIES  # a key from before classes


@pytest.mark.parametrize("text, classes", [("batch", ("batch",)), ("batch,interactive", PRIORITIES),
                                           (" interactive , interactive ", ("interactive",))])
def test_class_lists(text, classes):
    assert apikeys.parse_classes(text) == classes


@pytest.mark.parametrize("text", ["", ",", "urgent", "batch,urgent", "Batch"])
def test_bad_class_lists(text):
    with pytest.raises(ValueError):
        apikeys.parse_classes(text)


def test_a_caller_is_refused_a_class_its_key_may_not_use():
    caller = Caller("acme", LIMITS, "k", classes=("interactive",))
    caller.check_class("interactive")
    caller.check_class("urgent")  # not a class: the request's own validation answers 400
    with pytest.raises(ApiError) as error:
        caller.check_class("batch")
    refusal = error.value
    assert (refusal.status, refusal.code, refusal.param, refusal.type) == (403, "priority_not_allowed", "priority",
                                                                          "permission_error")
    Caller("acme", LIMITS, "k").check_class("batch")  # a key with every class


def test_the_client_can_put_a_job_in_a_class():
    job = Job(prompt="a fox")
    batch = with_priority(job, "batch")
    assert batch.priority == "batch" and batch.job_id == job.job_id and job.priority == "interactive"
    with pytest.raises(ValueError):
        with_priority(job, "urgent")  # type: ignore[arg-type]


def test_the_commands_take_a_class():
    parser = build_parser()
    assert parser.parse_args(["submit", "a fox"]).priority == "interactive"
    assert parser.parse_args(["submit", "a fox", "--priority", "batch"]).priority == "batch"
    assert parser.parse_args(["api-key", "create", "--tenant", "acme"]).classes == PRIORITIES
    assert parser.parse_args(["api-key", "create", "--tenant", "acme", "--classes", "batch"]).classes == ("batch",)
    for argv in (["submit", "a fox", "--priority", "urgent"], ["api-key", "create", "--tenant", "a", "--classes", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


class FakeClient:
    """What `hadis submit` publishes, without a broker: the job, and a record that never comes."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.waited: list[float] = []

    def connect(self) -> FakeClient:
        return self

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def submit(self, job: Job) -> str:
        self.jobs.append(job)
        return job.job_id

    async def wait(self, job_id: str, timeout_s: float) -> None:
        self.waited.append(timeout_s)

    async def status(self, job_id: str) -> None:
        return None


async def test_hadis_submit_publishes_the_class_and_waits_past_its_objective(monkeypatch, capsys):
    import shared.client
    from shared.cli import submit

    fake = FakeClient()
    monkeypatch.setattr(shared.client, "Client", fake)
    monkeypatch.setenv("HADIS_BATCH_SLO_S", "600")
    monkeypatch.setenv("HADIS_SLO_S", "60")
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        for argv in (["submit", "a fox", "--priority", "batch"], ["submit", "a fox"],
                     ["submit", "a fox", "--priority", "batch", "--timeout", "5"]):
            assert await submit(build_parser().parse_args(argv)) == 2  # not finished: the fake never ends it
    finally:
        get_settings.cache_clear()
    assert [job.priority for job in fake.jobs] == ["batch", "interactive", "batch"]
    assert fake.waited[0] == pytest.approx(630.0, abs=1) and fake.waited[1:] == [120.0, 5.0]
    assert "not finished within" in capsys.readouterr().out
