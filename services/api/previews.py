"""Streamed previews at the api (docs/jobs.md, Previews): OpenAI's image streaming for
`POST /v1/images/generations` with `stream: true`, and the `preview` events of a job's own SSE
stream (`GET /v1/jobs/{id}/events?previews=1`, services/api/streaming.py's event_stream).

The worker stores a job's previews as its model makes them (`<ns>:preview:<id>:<i>`) and
announces each on the progress stream, which the event hub hands to the job's waiters. The
OpenAI stream waits on those events and the job's state changes: each preview becomes an
`image_generation.partial_image` event as it comes (in index order, at most `partial_images`),
the image an `image_generation.completed` event, and a job that ends without one (failed,
expired, cancelled), or is still running at the stream's hold time, an `error` event in OpenAI's
shape (which the openai package raises as APIError). A comment line every RECHECK_S (5 s) with
nothing to say keeps proxies from closing a quiet stream; it is held at most until the job's
deadline and HADIS_API_WAIT_GRACE_S, as an images request that does not stream. Previews are read again at every state
change, so one whose announcement was missed still comes before the image (the worker stores a
job's previews before its image)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from services.api.state import Api
from services.api.streaming import RECHECK_S, next_event, sse
from shared.events import JobEvent
from shared.images_api import ApiError, unserved_error
from shared.schemas import Job, JobRecord, JobState

# hadis counts no tokens: the completed event's usage (which OpenAI's clients expect) is zeros.
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0}


def openai_head(job: Job) -> dict[str, Any]:
    """The fields OpenAI's partial and completed events repeat from the request."""
    return {"background": "opaque", "output_format": job.output_format, "quality": job.quality,
            "size": f"{job.width}x{job.height}"}


def error_event(error: ApiError) -> bytes:
    return sse("error", {"type": "error", **error.body()})


async def new_previews(api: Api, job_id: str, sent: int, wanted: int) -> list[bytes]:
    """The job's previews stored from index `sent` on, in order, up to the first one missing."""
    found: list[bytes] = []
    for data in await api.store.get_previews(job_id, list(range(sent, wanted))):
        if data is None:
            break
        found.append(data)
    return found


async def openai_stream(api: Api, tenant: str, job: Job, give_up_at: float) -> AsyncIterator[bytes]:
    """OpenAI's image stream for one job (see the module's docstring), until give_up_at at most."""
    head, job_id, sent = openai_head(job), job.job_id, 0
    with api.hub.subscribe([job_id]) as events:
        event: JobEvent | None = None
        while True:
            if event is None or event.preview is not None or event.step is None:
                for data in await new_previews(api, job_id, sent, job.partial_images):
                    yield sse("image_generation.partial_image", {
                        "type": "image_generation.partial_image", "b64_json": base64.b64encode(data).decode(),
                        "created_at": int(time.time()), "partial_image_index": sent, **head})
                    sent += 1
            if event is None or event.step is None:
                record = await api.store.get(job_id)
                if record is not None and record.state.terminal:
                    await api.store.release_slots(tenant, [job_id])
                    yield await ending(api, record, head)
                    return
            if (remaining := give_up_at - time.time()) <= 0 or api.service.stopping.is_set():
                yield error_event(ApiError(408, f"the image was not ready in time; GET /v1/jobs/{job_id} follows it",
                                           type="timeout", code="not_ready_in_time"))
                return
            event = await next_event(events, min(remaining, RECHECK_S))
            if event is None:  # nothing for RECHECK_S: a comment line keeps proxies from closing the stream
                yield b": keep-alive\n\n"


async def ending(api: Api, record: JobRecord, head: dict[str, Any]) -> bytes:
    """The stream's last event: the image, or why there is none."""
    if record.state is not JobState.done:
        return error_event(unserved_error(record))
    image = await api.store.get_image(record.job_id)
    if image is None:
        return error_event(ApiError(500, "the job is done but its image is no longer stored", type="server_error",
                                    code="image_missing"))
    return sse("image_generation.completed", {
        "type": "image_generation.completed", "b64_json": base64.b64encode(image).decode(),
        "created_at": int(time.time()), **head, "usage": NO_USAGE})

