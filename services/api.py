"""The HTTP api: the OpenAI Images API and async job routes in front of the same queue.

A thin service like the others: it checks the caller's key (the tenant), admits the request
(rate limit, quota of jobs in flight), validates, publishes `Job`s to the ingress queue with the
broker's confirm, and reads records and images through the store. 202 is answered only after the
confirm: an accepted job is durable, whatever happens to this process next.

    POST   /v1/images/generations   OpenAI-compatible: submit, wait up to the SLO, answer the images
    GET    /v1/models               the latency classes `model` may name
    POST   /v1/jobs                 the Job contract -> 202 {"id"}; Idempotency-Key honoured
    GET    /v1/jobs/{id}            the record
    GET    /v1/jobs/{id}/image      the PNG (ETag), with the key or a signed URL
    GET    /v1/jobs/{id}/events     server-sent events of its state changes, ending at the terminal one
    DELETE /v1/jobs/{id}            cancel while queued: it ends `failed` and is not generated
    GET    /healthz                 200 when the store and the broker answer
    GET    /openapi.json, /docs     the schema and its page

Rules live elsewhere: shapes and the request-to-jobs mapping in shared/images_api.py, every
budget a tenant is charged in services/api_admission.py (its rules in shared/policies/tenancy.py),
keys in shared/apikeys.py, signed URLs in shared/urlsigning.py, the HTTP plumbing in
services/api_http.py. Bounds: docs/security.md."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api_admission import ANONYMOUS, Admission, Caller
from services.api_http import (
    HeaderLimit,
    HeldStream,
    RequestMetrics,
    b64_body,
    disconnected,
    error_response,
    json_body,
    read_json,
    server_for,
    sse,
)
from shared import apikeys, metrics, urlsigning
from shared.errors import HadisError, Overloaded, Unavailable
from shared.events import EventHub, JobEvent
from shared.images_api import (
    ApiError,
    ImagesRequest,
    bad_request,
    from_validation,
    idempotency_digest,
    image_data,
    job_from_body,
    jobs_for,
    models_list,
    not_found,
    record_view,
    unserved_error,
)
from shared.logging import get_logger
from shared.schemas import Job, JobRecord, JobState, new_job_id, valid_job_id
from shared.service import Service, run
from shared.store import Change

log = get_logger(__name__)

RECHECK_S = 5.0  # a waiter reads the record again at least this often (an event can be missed)
KEEPALIVE_S = 15.0  # an SSE comment line this often keeps proxies from closing an idle stream
STREAM_GRACE_S = 60.0  # an event stream ends this long after the job's deadline, terminal or not
CANCELLABLE = (JobState.queued, JobState.routed)


class Api:
    """What the routes do, apart from HTTP."""

    def __init__(self, service: Service, hub: EventHub) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.hub = hub
        # Read at most this long ago: a rotation or revocation reaches every replica within it.
        self.url_secrets = urlsigning.SecretCache(self.store.url_secrets,
                                                  min(urlsigning.CACHE_S, self.settings.api_key_cache_s))
        self.admission = Admission(service)

    # Who is calling.
    async def caller(self, request: Request) -> Caller:
        return await self.admission.caller(request)

    async def _stored_key(self, key_id: str) -> apikeys.StoredKey | None:
        return await self.admission.stored_key(key_id)

    async def accept(self, caller: Caller, jobs: list[Job]) -> None:
        """Admit, publish with confirms, then record `queued` (the router records it too, whichever
        comes first): after this returns every job is durable in the broker."""
        await self.admission.admit(caller, jobs)
        bus = self.service.bus
        results = await asyncio.gather(*(bus.publish(bus.queues.requests, job, message_id=job.job_id)
                                         for job in jobs), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            published = [job for job, result in zip(jobs, results, strict=True) if result is None]
            await self.withdraw(caller, jobs, published)
            if not all(isinstance(error, HadisError | OSError) for error in errors):
                raise errors[0]
            raise unavailable(errors[0], caller.tenant)
        metrics.observe_api_accepted(caller.tenant, len(jobs))
        for job in jobs:
            try:
                await self.store.apply(queued_record(job, self.settings.slo_s))
            except HadisError as error:  # published: the router writes the record
                log.warning("queued_record_not_written", job_id=job.job_id, error=str(error))

    async def withdraw(self, caller: Caller, jobs: list[Job], published: list[Job]) -> None:
        """A request answered 503 leaves nothing running: the jobs already published are recorded
        `failed` before the router takes them (or, routed already, moved there from `queued` or
        `routed`), so the client's retry is the only copy. A job a worker took in between keeps its
        slot until it ends (the api gives it back then)."""
        running: list[str] = []
        for job in published:
            outcome = await self.store.apply(withdrawn_record(job, self.settings.slo_s))
            if not outcome.applied:
                outcome = await self.store.apply(Change(job.job_id, JobState.failed, {"error": WITHDRAWN},
                                                        detail=WITHDRAWN, only_from=CANCELLABLE))
            if not outcome.applied and outcome.before is not None and not outcome.before.terminal:
                running.append(job.job_id)
        await self.store.release_slots(caller.tenant, [job.job_id for job in jobs if job.job_id not in running])
        if running:
            log.warning("withdrawn_jobs_running", job_ids=running)

    # Reading.
    async def own_record(self, caller: Caller, job_id: str) -> JobRecord:
        """The caller's job (404 for another tenant's, as for none), within its read rate."""
        self.admission.admit_read(caller.tenant)
        record = await self.store.get(job_id) if valid_job_id(job_id) else None
        if record is None or record.tenant != caller.tenant:
            raise not_found()
        if record.state.terminal:
            await self.store.release_slots(caller.tenant, [job_id])
        return record

    async def wait_terminal(self, job_ids: list[str], give_up_at: float,
                            request: Request | None = None) -> dict[str, JobRecord]:
        """The records of these jobs once terminal; those not terminal by give_up_at are absent. A
        client that disconnects stops the wait (499): it holds no waiter until the deadline."""
        if request is None:
            return await self._wait_terminal(job_ids, give_up_at)
        waiting = asyncio.ensure_future(self._wait_terminal(job_ids, give_up_at))
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, gone):
                task.cancel()
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        raise ApiError(499, "the client closed the request; its jobs go on (GET /v1/jobs/{id})",
                       code="client_closed_request")

    async def _wait_terminal(self, job_ids: list[str], give_up_at: float) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        with self.hub.subscribe(job_ids) as events:
            await self._read_terminal(job_ids, records)
            while len(records) < len(job_ids) and (remaining := give_up_at - time.time()) > 0:
                event = await _next_event(events, min(remaining, RECHECK_S))
                if event is None:
                    await self._read_terminal(job_ids, records)
                elif event.state.terminal and event.job_id not in records:
                    await self._read_terminal([event.job_id], records)
        return records

    async def _read_terminal(self, job_ids: list[str], records: dict[str, JobRecord]) -> None:
        for job_id in job_ids:
            if job_id not in records:
                record = await self.store.get(job_id)
                if record is not None and record.state.terminal:
                    records[job_id] = record

    # Image URLs: signed, so a client can hand them on without its key (as OpenAI's are), and bound
    # to that key, so revoking it revokes them (shared/urlsigning.py).
    async def image_url(self, request: Request, job_id: str, key_id: str) -> str:
        expires = int(time.time()) + self.store.image_ttl
        base = (self.settings.api_public_url or str(request.base_url)).rstrip("/")
        secret = (await self.url_secrets.get()).current
        return f"{base}/v1/jobs/{job_id}/image?{urlsigning.query(secret, job_id, expires, key_id)}"

    async def signed(self, job_id: str, request: Request) -> JobRecord | None:
        """The record a signed URL grants; None when the query carries no signature (the key decides).
        Anybody may call this: nothing is read from the store before the signature verifies, and a
        genuine URL's fetches count against its key's tenant's read rate, as the tenant's own would."""
        params = request.query_params
        try:
            query = urlsigning.parse({name: params.getlist(name) for name in urlsigning.PARAMS})
        except urlsigning.Malformed as error:
            raise ApiError(401, f"malformed image URL: {error}", code="invalid_signature") from None
        if query is None:
            return None
        verdict = urlsigning.Verdict.forged if not valid_job_id(job_id) else \
            urlsigning.verify(await self.url_secrets.get(), job_id, query, time.time())
        if verdict is urlsigning.Verdict.forged:
            raise ApiError(401, "the image URL's signature does not verify (altered, or its secret was rotated "
                           "or revoked)", code="invalid_signature")
        if verdict is urlsigning.Verdict.expired:
            raise ApiError(403, "the image URL has expired", code="url_expired")
        stored = await self._stored_key(query.key_id)
        if stored is None:
            raise ApiError(403, "the API key that made this image URL was revoked", code="url_revoked")
        self.admission.admit_read(stored.tenant)  # a URL's fetches count as its key's tenant's reads
        record = await self.store.get(job_id)
        if record is not None and record.tenant != stored.tenant:
            raise ApiError(403, "the API key that made this image URL was revoked", code="url_revoked")
        if record is None:
            raise not_found()
        return record


WITHDRAWN = "the request was answered 503 before every image was queued; the client retries it"


def withdrawn_record(job: Job, default_slo_s: float) -> Change:
    return Change(job.job_id, JobState.failed, {**job.record_fields(job.effective_deadline(default_slo_s)),
                                                "error": WITHDRAWN}, create=True, passing=(JobState.queued,),
                  detail=WITHDRAWN)


def queued_record(job: Job, default_slo_s: float) -> Change:
    return Change(job.job_id, JobState.queued, job.record_fields(job.effective_deadline(default_slo_s)),
                  create=True, detail="accepted by the api")


def unavailable(error: BaseException, tenant: str) -> ApiError:
    if isinstance(error, Overloaded):
        metrics.observe_api_refused(tenant, "busy")
        return ApiError(503, "the ingress queue is full; try again", type="service_unavailable",
                        code="overloaded", headers={"Retry-After": "5"})
    metrics.observe_api_refused(tenant, "unavailable")
    return ApiError(503, f"the job could not be queued: {error}", type="service_unavailable",
                    code="unavailable", headers={"Retry-After": "2"})


async def _next_event(events: asyncio.Queue[JobEvent], timeout_s: float) -> JobEvent | None:
    """The next event within timeout_s, else None. asyncio.timeout, not wait_for: on Python 3.11
    wait_for swallows a cancellation that meets a completed get, and a waiter whose client left
    would then wait on until the deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            return await events.get()
    except TimeoutError:
        return None


def create_app(api: Api) -> FastAPI:
    settings = api.settings
    app = FastAPI(title="hadis", version="0.1.0", description="Text-to-image serving within a latency objective: "
                  "the OpenAI Images API and async jobs. Authenticate with `Authorization: Bearer <API key>`.")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
        message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) \
            else str(error.detail)
        return error_response(ApiError(error.status_code, message, code=code, headers=dict(error.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = list(error.errors())
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(part) for part in first["loc"][1:]) or None
        message = str(first["msg"])
        return error_response(bad_request(f"{param}: {message}" if param else message, param=param))

    @app.exception_handler(Unavailable)
    async def on_unavailable(request: Request, error: Unavailable) -> JSONResponse:
        return error_response(ApiError(503, f"the store is unavailable: {error.reason}", type="service_unavailable",
                                       code="unavailable", headers={"Retry-After": "2"}))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("api_unexpected_error", path=request.url.path, error=repr(error))
        return error_response(ApiError(500, "internal error (logged)", type="server_error", code="internal_error"))

    @app.post("/v1/images/generations", openapi_extra=json_body(ImagesRequest), tags=["OpenAI Images API"],
              summary="Generate images (OpenAI-compatible); waits up to the SLO")
    async def images_generations(request: Request) -> Response:
        caller = await api.caller(request)
        data, _ = await read_json(request, settings.api_max_body_bytes, settings.api_body_timeout_s)
        try:
            images = ImagesRequest.model_validate(data)
        except ValidationError as error:
            metrics.observe_api_refused(caller.tenant, "invalid")
            raise from_validation(error) from None
        jobs = jobs_for(images, caller.tenant, settings.slo_s, settings.api_max_n, new_job_id)
        with api.admission.waiting(caller.tenant):
            await api.accept(caller, jobs)
            deadline = max(job.effective_deadline(settings.slo_s) for job in jobs)
            records = await api.wait_terminal([job.job_id for job in jobs], deadline + settings.api_wait_grace_s,
                                              request)
        await api.store.release_slots(caller.tenant, list(records))
        if len(records) < len(jobs):
            raise ApiError(408, f"{len(jobs) - len(records)} of {len(jobs)} images not ready within the "
                           f"objective; GET /v1/jobs/{{id}} follows them: {[j.job_id for j in jobs]}",
                           type="timeout", code="not_ready_in_time")
        for job in jobs:
            if records[job.job_id].state is not JobState.done:
                raise unserved_error(records[job.job_id])
        head = {"created": int(time.time()), "output_format": "png", "size": f"{jobs[0].width}x{jobs[0].height}"}
        if images.response_format == "url":
            urls = [await api.image_url(request, job.job_id, caller.key_id) for job in jobs]
            return JSONResponse({**head, "data": [image_data(records[job.job_id], None, "url", url)
                                                  for job, url in zip(jobs, urls, strict=True)]})
        job_ids = [job.job_id for job in jobs]
        if 0 in await api.store.image_lengths(job_ids):
            raise ApiError(500, "the job is done but its image is no longer stored", type="server_error",
                           code="image_missing")
        return StreamingResponse(b64_body(api.store.get_image, head, job_ids), media_type="application/json")

    @app.get("/v1/models", tags=["OpenAI Images API"], summary="The latency classes `model` may name")
    async def models(request: Request) -> dict:
        await api.caller(request)
        return models_list(int(time.time()))

    @app.post("/v1/jobs", status_code=202, openapi_extra=json_body(Job), tags=["Jobs"],
              summary="Submit a job (the Job contract); 202 once it is durable in the broker")
    async def submit_job(request: Request) -> JSONResponse:
        caller = await api.caller(request)
        digest = idempotency_digest(request.headers.get("idempotency-key"))
        data, body = await read_json(request, settings.api_max_body_bytes, settings.api_body_timeout_s)
        try:
            job = job_from_body(data, caller.tenant, new_job_id())
        except ApiError:
            metrics.observe_api_refused(caller.tenant, "invalid")
            raise
        # The key is bound only to a valid body: a client that fixes its body may retry with the same key.
        job_id, replay = job.job_id, False
        if digest is not None:
            body_digest = hashlib.sha256(body).hexdigest()
            existing = await api.store.claim_idempotency_key(caller.tenant, digest, f"{job_id} {body_digest}")
            if existing is not None:
                job_id, _, first_body = existing.partition(" ")
                if first_body != body_digest:
                    raise bad_request("this Idempotency-Key was used with another body", param="Idempotency-Key",
                                      code="idempotency_key_reused")
                job, replay = job.model_copy(update={"job_id": job_id}), True
        if replay and await api.store.get(job_id) is not None:
            return JSONResponse({"id": job_id, "object": "job", "status": "accepted"}, status_code=202,
                                headers={"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "true"})
        # A replay whose record is missing: the first attempt may have died before its publish
        # was confirmed, so publish again (the router serves an id once).
        await api.accept(caller, [job])
        return JSONResponse({"id": job_id, "object": "job", "status": "accepted"}, status_code=202,
                            headers={"Location": f"/v1/jobs/{job_id}"})

    @app.get("/v1/jobs/{job_id}", tags=["Jobs"], summary="The job's record")
    async def get_job(job_id: str, request: Request) -> dict:
        caller = await api.caller(request)
        return record_view(await api.own_record(caller, job_id))

    @app.get("/v1/jobs/{job_id}/image", tags=["Jobs"], summary="The job's PNG (with the key, or a signed URL)",
             responses={200: {"content": {"image/png": {}}}})
    async def get_image(job_id: str, request: Request) -> Response:
        try:
            record = await api.signed(job_id, request)
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
        etag = f'"{job_id}"'  # a job's final image is written once
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={"ETag": etag})
        png = await api.store.get_image(job_id)
        if png is None:
            raise ApiError(404, "the image is no longer stored (HADIS_IMAGE_TTL_S)", code="image_expired")
        return Response(png, media_type="image/png", headers={"ETag": etag, "Cache-Control": "private, max-age=3600"})

    @app.get("/v1/jobs/{job_id}/events", tags=["Jobs"], summary="Server-sent events of the job's state changes",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        caller = await api.caller(request)
        record = await api.own_record(caller, job_id)
        give_up_at = (record.deadline or time.time() + settings.slo_s) + STREAM_GRACE_S
        hold = api.admission.hold(caller.tenant)
        return HeldStream(event_stream(api, caller.tenant, job_id, give_up_at), hold, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/v1/jobs/{job_id}", tags=["Jobs"], summary="Cancel a job that is still queued")
    async def cancel_job(job_id: str, request: Request) -> dict:
        caller = await api.caller(request)
        record = await api.own_record(caller, job_id)
        if record.state not in CANCELLABLE:
            raise ApiError(409, f"the job is {record.state.value}; only a queued job can be cancelled",
                           code="not_cancellable")
        reason = "cancelled by the client (DELETE /v1/jobs)"
        # The from-state guard is the store script's: a worker that claims the job after the read
        # above wins, and the cancel answers 409 having changed nothing.
        outcome = await api.store.apply(Change(job_id, JobState.failed, {"error": reason}, detail=reason,
                                               only_from=CANCELLABLE))
        if not outcome.applied:
            state = outcome.before.value if outcome.before else "gone"
            raise ApiError(409, f"the job is {state}; only a queued job can be cancelled", code="not_cancellable")
        await api.store.release_slots(caller.tenant, [job_id])
        return record_view(await api.own_record(caller, job_id))

    @app.get("/healthz", tags=["Operations"], summary="200 when the store and the broker answer")
    async def healthz() -> JSONResponse:
        try:
            await asyncio.wait_for(api.store.ping(), 2.0)
            consumers = await asyncio.wait_for(api.service.bus.consumers(api.service.bus.queues.requests), 2.0)
        except (TimeoutError, HadisError, OSError) as error:
            return JSONResponse({"status": "unavailable", "error": str(error)}, status_code=503)
        # 200 without routers too: jobs are durable in the queue; `ingress_consumers` says whether
        # anything takes them now.
        return JSONResponse({"status": "ok", "ingress_consumers": consumers, "waiters": api.admission.waiters})

    app.add_middleware(HeaderLimit, limit=settings.api_max_header_bytes)
    app.add_middleware(RequestMetrics)
    return app


async def event_stream(api: Api, tenant: str, job_id: str, give_up_at: float) -> AsyncIterator[bytes]:
    """The record's history as events (`event: state`), then each new change, until the terminal
    one; a comment line every KEEPALIVE_S; `event: timeout` if the job is still open at give_up_at."""
    sent = 0
    last_sent_at = time.monotonic()
    with api.hub.subscribe([job_id]) as events:
        while True:
            record = await api.store.get(job_id)
            if record is None:
                yield sse("error", {"message": "the record is gone (expired from the store)"})
                return
            for transition in record.history[sent:]:
                yield sse("state", {"job_id": job_id, **transition.model_dump(mode="json")})
                last_sent_at = time.monotonic()
            sent = len(record.history)
            if record.state.terminal:
                await api.store.release_slots(tenant, [job_id])
                return
            if api.service.stopping.is_set() or time.time() >= give_up_at:
                yield sse("timeout", {"job_id": job_id, "state": record.state.value})
                return
            wait_s = min(RECHECK_S, KEEPALIVE_S - (time.monotonic() - last_sent_at), give_up_at - time.time())
            if await _next_event(events, max(wait_s, 0.01)) is None and \
                    time.monotonic() - last_sent_at >= KEEPALIVE_S - 0.01:
                yield b": keep-alive\n\n"
                last_sent_at = time.monotonic()


async def main(service: Service) -> None:
    hub = EventHub(service.store)
    await hub.start()
    api = Api(service, hub)
    await api.url_secrets.get()  # the first replica makes the secret
    server = server_for(create_app(api), api.settings)
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        while not server.started:
            if serving.done():
                await serving  # raises why it could not start (the port is taken)
                raise RuntimeError("the HTTP server stopped before it started")
            await asyncio.sleep(0.05)
        metrics.mark_ready("api")
        log.info("api_ready", host=service.settings.api_host, port=service.settings.api_port)
        stopping = asyncio.create_task(service.stopping.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        metrics.mark_ready("api", False)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        await hub.stop()


if __name__ == "__main__":
    run("api", main)
