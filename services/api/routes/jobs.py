"""The async job routes: submit the Job contract (202 once durable, Idempotency-Key honoured), read
its record, its image (with the key or a signed URL) and its events, cancel it until it ends."""

from __future__ import annotations

import hashlib
import time

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from services.api.bodies import json_body, read_json
from services.api.keys import ANONYMOUS, Caller
from services.api.routes import RouteGroup
from services.api.signing import signed
from services.api.state import Api, api_of
from services.api.streaming import STREAM_GRACE_S, HeldStream, event_stream
from services.api.submission import accept
from shared import metrics
from shared.images_api import ApiError, bad_request, idempotency_digest, image_format, job_from_body, record_view
from shared.schemas import MEDIA_TYPES, Job, JobState, new_job_id

routes = RouteGroup()


@routes.post("/v1/jobs", status_code=202, openapi_extra=json_body(Job), tags=["Jobs"],
             summary="Submit a job (the Job contract); 202 once it is durable in the broker")
async def submit_job(request: Request) -> JSONResponse:
    api = api_of(request)
    caller = await api.caller(request)
    digest = idempotency_digest(request.headers.get("idempotency-key"))
    data, body = await read_json(request, api.settings.api_max_body_bytes, api.settings.api_body_timeout_s)
    # The key's classes, before any id is made or slot taken (a value that is no class: the 400 below).
    caller.check_class(data.get("priority", "interactive") if isinstance(data, dict) else None)
    try:
        job = job_from_body(data, caller.tenant, new_job_id())
    except ApiError:
        metrics.observe_api_refused(caller.tenant, "invalid")
        raise
    # The key is bound only to a valid body: a client that fixes its body may retry with the same key.
    replay = False
    if digest is not None:
        job, replay = await _claim(api, caller, digest, body, job)
    if replay and await api.store.get(job.job_id) is not None:
        return JSONResponse({"id": job.job_id, "object": "job", "status": "accepted"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job.job_id}", "Idempotent-Replayed": "true"})
    # A replay whose record is missing: the first attempt may have died before its publish
    # was confirmed, so publish again (the router serves an id once).
    await accept(api, caller, [job])
    return JSONResponse({"id": job.job_id, "object": "job", "status": "accepted"}, status_code=202,
                        headers={"Location": f"/v1/jobs/{job.job_id}"})


async def _claim(api: Api, caller: Caller, digest: str, body: bytes, job: Job) -> tuple[Job, bool]:
    """The job under its Idempotency-Key: this one, or the first one's id if the key was used (a
    replay, True); 400 for a key used with another body."""
    body_digest = hashlib.sha256(body).hexdigest()
    existing = await api.store.claim_idempotency_key(caller.tenant, digest, f"{job.job_id} {body_digest}")
    if existing is None:
        return job, False
    job_id, _, first_body = existing.partition(" ")
    if first_body != body_digest:
        raise bad_request("this Idempotency-Key was used with another body", param="Idempotency-Key",
                          code="idempotency_key_reused")
    return job.model_copy(update={"job_id": job_id}), True


@routes.get("/v1/jobs/{job_id}", tags=["Jobs"], summary="The job's record")
async def get_job(job_id: str, request: Request) -> dict:
    api = api_of(request)
    caller = await api.caller(request)
    record = await api.own_record(caller, job_id)
    view = record_view(record)
    view.update(await api.whereabouts.of(record))  # its place in line and its ETA, while it has not ended
    if record.webhook_url is not None:  # its delivery (docs/jobs.md, Webhooks); none yet: pending its end
        view["webhook"] = await api.store.webhook_status(job_id) or {"state": "pending", "attempts": 0}
    return view


@routes.get("/v1/jobs/{job_id}/image", tags=["Jobs"],
            summary="The job's image, in its output_format (with the key, or a signed URL)",
            responses={200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}}})
async def get_image(job_id: str, request: Request) -> Response:
    api = api_of(request)
    try:
        record = await signed(api, job_id, request)
    except ApiError as error:
        if "authorization" not in request.headers:
            if error.status in (401, 403):
                metrics.observe_api_refused(ANONYMOUS, "auth")
            raise
        record = None  # a caller that sends a key is judged by its key
    if record is None:
        record = await api.own_record(await api.caller(request), job_id)
    if record.state is not JobState.done:
        if record.state.terminal:
            raise ApiError(404, f"the job ended {record.state.value}; it has no image", code="no_image")
        raise ApiError(409, f"the job is {record.state.value}; its image is not ready", code="not_ready")
    # A job's final image is written once, in one format (the record's; the bytes' for an older record).
    etag = f'"{job_id}.{record.output_format}"' if record.output_format else None
    if etag is not None and etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={"ETag": etag})
    image = await api.store.get_image(job_id)
    if image is None:
        raise ApiError(404, "the image is no longer stored (HADIS_IMAGE_TTL_S)", code="image_expired")
    fmt = image_format(record, image)
    return Response(image, media_type=MEDIA_TYPES[fmt],
                    headers={"ETag": f'"{job_id}.{fmt}"', "Cache-Control": "private, max-age=3600"})


@routes.get("/v1/jobs/{job_id}/events", tags=["Jobs"], summary="Server-sent events of the job's state changes",
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(job_id: str, request: Request, previews: bool = False) -> StreamingResponse:
    """State changes, place in line, progress; with `?previews=1` the previews the job asked for
    (its `partial_images`) as `event: preview` (docs/jobs.md, Previews)."""
    api = api_of(request)
    caller = await api.caller(request)
    record = await api.own_record(caller, job_id)
    give_up_at = (record.deadline or time.time() + api.settings.slo_s) + STREAM_GRACE_S
    hold = api.admission.hold(caller.tenant)
    return HeldStream(event_stream(api, caller.tenant, job_id, give_up_at, previews), hold,
                      media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@routes.delete("/v1/jobs/{job_id}", tags=["Jobs"], summary="Cancel a job that has not ended, wherever it is")
async def cancel_job(job_id: str, request: Request) -> dict:
    """`cancelled` from any state that is not terminal (docs/jobs.md, Cancel): waiting, the job is
    dropped where it waits; generating, its batch stops at the next step when no other job is in
    it. The store's script decides: a job that ended after the read below answers 409, unchanged."""
    api = api_of(request)
    caller = await api.caller(request)
    record = await api.own_record(caller, job_id)  # the caller's job, or 404
    outcome = await api.store.cancel(job_id, "cancelled by the client (DELETE /v1/jobs)")
    if not outcome.applied:
        state = outcome.before.value if outcome.before else "gone"
        raise ApiError(409, f"the job is {state}; a job that has ended cannot be cancelled", code="not_cancellable")
    metrics.observe_cancelled(record.tier.value if record.tier else None, record.priority or "interactive")
    await api.store.release_slots(caller.tenant, [job_id])
    # The answer reads the record again without charging the read rate: a 429 here would tell the
    # client to retry a cancel that is done (and the retry would answer 409).
    return record_view(await api.store.get(job_id) or record)
