"""The OpenAI Images API: generations that wait up to the objective for their images, and the
latency classes `model` may name. Request shapes and the request-to-jobs mapping are
shared/images_api.py's."""

from __future__ import annotations

import time

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from services.api.bodies import json_body, read_json
from services.api.keys import Caller
from services.api.previews import openai_stream
from services.api.routes import RouteGroup
from services.api.signing import image_url
from services.api.state import Api, api_of
from services.api.streaming import HeldStream, b64_body, wait_terminal
from services.api.submission import accept
from shared import metrics
from shared.images_api import (
    ApiError,
    ImagesRequest,
    from_validation,
    image_data,
    jobs_for,
    models_list,
    unserved_error,
)
from shared.schemas import Job, JobRecord, JobState, new_job_id

routes = RouteGroup()


@routes.post("/v1/images/generations", openapi_extra=json_body(ImagesRequest), tags=["OpenAI Images API"],
             summary="Generate images (OpenAI-compatible); waits up to the objective (the class's, or model's)")
async def images_generations(request: Request) -> Response:
    api = api_of(request)
    settings = api.settings
    caller = await api.caller(request)
    data, _ = await read_json(request, settings.api_max_body_bytes, settings.api_body_timeout_s)
    try:
        images = ImagesRequest.model_validate(data)
    except ValidationError as error:
        metrics.observe_api_refused(caller.tenant, "invalid")
        raise from_validation(error) from None
    caller.check_class(images.priority or "interactive")  # before any id is made or slot taken
    jobs = jobs_for(images, caller.tenant, settings.slo_s, settings.api_max_n, new_job_id, settings.batch_slo_s)
    if images.stream:
        return await _stream(api, caller, jobs[0])
    with api.admission.waiting(caller.tenant):
        await accept(api, caller, jobs)
        deadline = max(job.effective_deadline(settings.slo_s, settings.batch_slo_s) for job in jobs)
        records = await wait_terminal(api, [job.job_id for job in jobs], deadline + settings.api_wait_grace_s,
                                      request)
    await api.store.release_slots(caller.tenant, list(records))
    if len(records) < len(jobs):
        raise ApiError(408, f"{len(jobs) - len(records)} of {len(jobs)} images not ready within the "
                       f"objective; GET /v1/jobs/{{id}} follows them: {[j.job_id for j in jobs]}",
                       type="timeout", code="not_ready_in_time")
    for job in jobs:
        if records[job.job_id].state is not JobState.done:
            raise unserved_error(records[job.job_id])
    return await _images(api, request, caller, jobs, records, images.response_format)


async def _stream(api: Api, caller: Caller, job: Job) -> Response:
    """OpenAI's image streaming (services/api/previews.py): the job is accepted first, so that a
    refusal is a plain HTTP error; then events until the image, held as an images request is."""
    hold = api.admission.hold(caller.tenant)
    try:
        await accept(api, caller, [job])
    except BaseException:
        hold.release()
        raise
    settings = api.settings
    give_up_at = job.effective_deadline(settings.slo_s, settings.batch_slo_s) + settings.api_wait_grace_s
    return HeldStream(openai_stream(api, caller.tenant, job, give_up_at), hold, media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _images(api: Api, request: Request, caller: Caller, jobs: list[Job], records: dict[str, JobRecord],
                  response_format: str | None) -> Response:
    """The answer once every image is done: signed URLs, or the images (in the request's format, as
    their worker encoded them) in base64 streamed one at a time."""
    head = {"created": int(time.time()), "output_format": jobs[0].output_format,
            "size": f"{jobs[0].width}x{jobs[0].height}"}
    if response_format == "url":
        urls = [await image_url(api, request, job.job_id, caller.key_id) for job in jobs]
        return JSONResponse({**head, "data": [image_data(records[job.job_id], None, "url", url)
                                              for job, url in zip(jobs, urls, strict=True)]})
    job_ids = [job.job_id for job in jobs]
    if 0 in await api.store.image_lengths(job_ids):
        raise ApiError(500, "the job is done but its image is no longer stored", type="server_error",
                       code="image_missing")
    return StreamingResponse(b64_body(api.store.get_image, head, job_ids), media_type="application/json")


@routes.get("/v1/models", tags=["OpenAI Images API"], summary="The latency classes `model` may name")
async def models(request: Request) -> dict:
    await api_of(request).caller(request)
    return models_list(int(time.time()))
