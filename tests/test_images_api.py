"""The OpenAI Images API's rules, without a server: model names, sizes, the jobs a request becomes,
and what an unserved job answers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.images_api import (
    ApiError,
    ImagesRequest,
    jobs_for,
    models_list,
    parse_size,
    record_view,
    slo_of_model,
    unserved_error,
)
from shared.schemas import JobRecord, JobState


@pytest.mark.parametrize("model, slo", [(None, 6.0), ("hadis", 6.0), ("dall-e-3", 6.0), ("gpt-image-1", 6.0),
                                        ("hadis-10s", 10.0), ("hadis-1s", 1.0), ("hadis-3600s", 3600.0)])
def test_models_are_latency_classes(model, slo):
    assert slo_of_model(model, 6.0) == slo


@pytest.mark.parametrize("model", ["sdxl", "hadis-0s", "hadis-3601s", "hadis-10", "HADIS", "hadis-1.5s"])
def test_unknown_models_are_404(model):
    with pytest.raises(ApiError) as error:
        slo_of_model(model, 6.0)
    assert error.value.status == 404 and error.value.code == "model_not_found"


@pytest.mark.parametrize("size, expected", [(None, (512, 512)), ("auto", (512, 512)), ("1024x768", (1024, 768)),
                                            ("64x2048", (64, 2048))])
def test_sizes(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["1024", "63x64", "64x2056", "100x100", "0x0", "512X512", " 512x512", "-64x64"])
def test_bad_sizes(size):
    with pytest.raises(ApiError) as error:
        parse_size(size)
    assert error.value.status == 400 and error.value.param == "size"


def test_a_request_becomes_one_job_per_image_with_its_own_seed():
    request = ImagesRequest(prompt="a fox", n=3, size="256x128", user="u-1", model="hadis-9s")
    jobs = jobs_for(request, "acme", 6.0, 10, iter(["a", "b", "c"]).__next__)
    assert [job.job_id for job in jobs] == ["a", "b", "c"]
    assert {(job.width, job.height, job.slo_s, job.tenant) for job in jobs} == {(256, 128, 9.0, "acme")}
    assert len({job.seed for job in jobs}) == 3
    assert jobs[0].metadata == {"api": "images", "user": "u-1"}


def test_n_and_the_job_bounds_apply():
    with pytest.raises(ApiError) as error:
        jobs_for(ImagesRequest(prompt="a fox", n=11), "acme", 6.0, 10, iter(["x"] * 11).__next__)
    assert error.value.param == "n"
    with pytest.raises(ApiError) as error:
        jobs_for(ImagesRequest(prompt="x" * 2001), "acme", 6.0, 10, iter(["x"]).__next__)
    assert error.value.status == 400 and error.value.param == "prompt"


@pytest.mark.parametrize("body", [{"prompt": "a", "partial_images": 4}, {"prompt": "a", "partial_images": -1},
                                  {"prompt": "a", "background": "transparent"}, {"prompt": "a", "n": 0},
                                  {"prompt": "a", "output_format": "gif"}, {"prompt": "a", "user": "\x00"},
                                  {"prompt": "a", "output_compression": 101}])
def test_what_cannot_be_honoured_is_refused(body):
    with pytest.raises(ValidationError):
        ImagesRequest.model_validate(body)


def test_a_stream_carries_one_image_in_base64_with_its_previews():
    def ids(count: int):
        return iter(["x"] * count).__next__

    streamed = jobs_for(ImagesRequest(prompt="a fox", stream=True, partial_images=2), "acme", 6.0, 10, ids(1))
    assert [job.partial_images for job in streamed] == [2]
    # partial_images without stream is OpenAI's no-op
    assert jobs_for(ImagesRequest(prompt="a fox", partial_images=2), "acme", 6.0, 10, ids(1))[0].partial_images == 0
    for body, param in (({"n": 2}, "n"), ({"response_format": "url"}, "response_format")):
        with pytest.raises(ApiError) as error:
            jobs_for(ImagesRequest(prompt="a fox", stream=True, **body), "acme", 6.0, 10, ids(2))
        assert error.value.status == 400 and error.value.param == param


@pytest.mark.parametrize("state, error, status", [
    (JobState.expired, "408 Expired: deadline passed", 408),
    (JobState.failed, "422 InvalidJob: bad", 400),
    (JobState.failed, "424 BackendFailed: the model raised", 500),
    (JobState.failed, "503 HeavyUnavailable: no heavy GPUs", 503),
    (JobState.cancelled, "cancelled by the client (DELETE /v1/jobs)", 409),
])
def test_unserved_jobs_answer_by_what_happened(state, error, status):
    answer = unserved_error(JobRecord(job_id="j", state=state, error=error))
    assert answer.status == status and error in answer.message
    assert set(answer.body()["error"]) == {"message", "type", "param", "code"}


def test_a_record_shows_its_step_only_while_it_generates():
    running = JobRecord(job_id="j", state=JobState.generating, step=3, steps=8, model="sd-turbo")
    assert (record_view(running)["step"], record_view(running)["steps"]) == (3, 8)
    ended = running.model_copy(update={"state": JobState.done})
    assert (record_view(ended)["step"], record_view(ended)["steps"], record_view(ended)["model"]) == \
        (None, None, "sd-turbo")


def test_models_list_has_the_openai_shape():
    listed = models_list(0)
    assert listed["object"] == "list" and all(entry["object"] == "model" for entry in listed["data"])
