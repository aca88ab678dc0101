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

Rules live elsewhere: shapes and the request-to-jobs mapping in shared/images_api.py, the rate limit
and quota in shared/policies/tenancy.py, keys in shared/apikeys.py. Bounds: docs/backends.md."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import apikeys, metrics
from shared.errors import HadisError, Overloaded, Unavailable
from shared.events import EventHub, JobEvent
from shared.images_api import (
    ApiError,
    ImagesRequest,
    bad_request,
    from_validation,
    image_data,
    jobs_for,
    models_list,
    not_found,
    unserved_error,
)
from shared.logging import get_logger
from shared.policies import tenancy
from shared.schemas import Job, JobRecord, JobState, check_printable, new_job_id, valid_job_id
from shared.service import Service, run
from shared.store import Change

log = get_logger(__name__)

RECHECK_S = 5.0  # a waiter reads the record again at least this often (an event can be missed)
KEEPALIVE_S = 15.0  # an SSE comment line this often keeps proxies from closing an idle stream
STREAM_GRACE_S = 60.0  # an event stream ends this long after the job's deadline, terminal or not
CAS_ATTEMPTS = 8  # tries of the rate limit's compare-and-set when replicas contend
MAX_IDEMPOTENCY_KEY_CHARS = 255
CANCELLABLE = (JobState.queued, JobState.routed)
ANONYMOUS = "-"
V = TypeVar("V")


class Recent(Generic[V]):
    """Values read from the store, trusted for ttl_s, at most BOUND of them (then forgotten at
    once: a flood of distinct keys cannot grow the process). What the store lacks is not kept."""

    BOUND = 10_000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[V, float]] = {}

    async def get(self, key: str, read: Callable[[], Awaitable[V | None]]) -> V | None:
        cached = self._values.get(key)
        if cached is not None and time.monotonic() - cached[1] < self.ttl_s:
            return cached[0]
        value = await read()
        if value is not None:
            if len(self._values) >= self.BOUND:
                self._values.clear()
            self._values[key] = (value, time.monotonic())
        return value


@dataclass(frozen=True)
class Caller:
    tenant: str
    limits: tenancy.Limits


class Api:
    """What the routes do, apart from HTTP."""

    def __init__(self, service: Service, hub: EventHub, url_secret: bytes) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.hub = hub
        self.url_secret = url_secret
        # Keys and tenants' limits are trusted for HADIS_API_KEY_CACHE_S: a revocation or a new
        # limit takes effect within it (docs/security.md).
        self._keys: Recent[apikeys.StoredKey] = Recent(self.settings.api_key_cache_s)
        self._tenant_limits: Recent[tenancy.Limits] = Recent(self.settings.api_key_cache_s)
        self.waiters = 0
        # One rate check per tenant at a time in this process: the compare-and-set then only
        # contends with other replicas.
        self._rate_locks: dict[str, asyncio.Lock] = {}

    # Who is calling.
    async def caller(self, request: Request) -> Caller:
        token = apikeys.bearer_token(request.headers.get("authorization"))
        parsed = apikeys.parse_key(token) if token else None
        if parsed is None:
            metrics.observe_api_refused(ANONYMOUS, "auth")
            raise ApiError(401, "missing or malformed API key: send `Authorization: Bearer hds_...` "
                           "(hadis api-key create --tenant NAME makes one)", code="invalid_api_key")
        key_id, secret = parsed
        stored = await self._stored_key(key_id)
        if stored is None or not apikeys.verify(stored, secret):
            metrics.observe_api_refused(ANONYMOUS, "auth")
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        request.scope.setdefault("state", {})["tenant"] = stored.tenant
        return Caller(stored.tenant, await self._limits(stored.tenant))

    async def _stored_key(self, key_id: str) -> apikeys.StoredKey | None:
        return await self._keys.get(key_id, lambda: self.store.get_api_key(key_id))

    async def _limits(self, tenant: str) -> tenancy.Limits:
        """The tenant's own limits (hadis api-key create --rate ...), else the settings' defaults."""
        defaults = tenancy.Limits(self.settings.api_rate_per_s, self.settings.api_burst, self.settings.api_max_active)

        async def read() -> tenancy.Limits:
            return await self.store.tenant_limits(tenant) or defaults

        return await self._tenant_limits.get(tenant, read) or defaults

    # Admission.
    async def admit_rate(self, caller: Caller, cost: int) -> None:
        if cost > caller.limits.burst:
            raise bad_request(f"{cost} images at once is more than this tenant's burst ({caller.limits.burst})",
                              param="n")
        lock = self._rate_locks.setdefault(caller.tenant, asyncio.Lock())
        async with lock:
            await self._take_rate(caller, cost)

    async def _take_rate(self, caller: Caller, cost: int) -> None:
        for _attempt in range(CAS_ATTEMPTS):
            raw, tat = await self.store.rate_tat(caller.tenant)
            now = time.time()
            decision = tenancy.rate_decision(tat, now, caller.limits, cost)
            if not decision.allowed:
                metrics.observe_api_refused(caller.tenant, "rate")
                raise ApiError(429, f"rate limit of {caller.limits.rate:g} requests/s (burst {caller.limits.burst}) "
                               "reached", type="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": tenancy.retry_after_header(decision.retry_after_s)})
            if await self.store.swap_rate_tat(caller.tenant, raw, decision.tat, decision.tat - now + 1.0):
                return
        raise ApiError(429, "too many concurrent requests for this tenant", type="rate_limit_error",
                       code="rate_limit_exceeded", headers={"Retry-After": "1"})

    async def take_slots(self, caller: Caller, jobs: list[Job]) -> None:
        """A quota slot per job, or none: over quota, the slots of jobs already ended are given
        back (read from their records) and the request tried once more."""
        for attempt in range(2):
            taken: list[str] = []
            for job in jobs:
                lapses_at = tenancy.slot_expires_at(job.effective_deadline(self.settings.slo_s))
                if not await self.store.take_slot(caller.tenant, job.job_id, lapses_at,
                                                  caller.limits.max_active, time.time()):
                    break
                taken.append(job.job_id)
            else:
                return
            await self.store.release_slots(caller.tenant, taken)
            if attempt == 0:
                await self.release_ended(caller.tenant)
        metrics.observe_api_refused(caller.tenant, "quota")
        raise ApiError(429, f"this tenant has {caller.limits.max_active} jobs in flight, its quota",
                       type="rate_limit_error", code="quota_exceeded", headers={"Retry-After": "1"})

    async def release_ended(self, tenant: str) -> None:
        job_ids = await self.store.slots(tenant)
        states = await self.store.states(job_ids)
        await self.store.release_slots(tenant, [job_id for job_id, state in zip(job_ids, states, strict=True)
                                                if state is not None and state.terminal])

    async def accept(self, caller: Caller, jobs: list[Job]) -> None:
        """Admit, publish with confirms, then record `queued` (the router records it too, whichever
        comes first): after this returns every job is durable in the broker."""
        await self.admit_rate(caller, len(jobs))
        await self.take_slots(caller, jobs)
        bus = self.service.bus
        try:
            await asyncio.gather(*(bus.publish(bus.queues.requests, job, message_id=job.job_id) for job in jobs))
        except (HadisError, OSError) as error:
            await self.store.release_slots(caller.tenant, [job.job_id for job in jobs])
            raise unavailable(error, caller.tenant) from None
        metrics.observe_api_accepted(caller.tenant, len(jobs))
        for job in jobs:
            try:
                await self.store.apply(queued_record(job, self.settings.slo_s))
            except HadisError as error:  # published: the router writes the record
                log.warning("queued_record_not_written", job_id=job.job_id, error=str(error))

    # Reading.
    async def own_record(self, caller: Caller, job_id: str) -> JobRecord:
        record = await self.store.get(job_id) if valid_job_id(job_id) else None
        if record is None or record.tenant != caller.tenant:
            raise not_found()
        if record.state.terminal:
            await self.store.release_slots(caller.tenant, [job_id])
        return record

    async def wait_terminal(self, job_ids: list[str], give_up_at: float) -> dict[str, JobRecord]:
        """The records of these jobs once terminal; those not terminal by give_up_at are absent."""
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

    def check_room(self, tenant: str) -> None:
        """Requests that hold a connection while they wait (images, event streams) are bounded."""
        if self.waiters >= self.settings.api_max_waiters:
            metrics.observe_api_refused(tenant, "busy")
            raise ApiError(503, f"{self.waiters} requests are waiting already; try again",
                           type="service_unavailable", code="too_many_waiters", headers={"Retry-After": "1"})

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        self.waiters += 1
        try:
            yield
        finally:
            self.waiters -= 1

    # Image URLs: signed, so a client can hand them on without its key (as OpenAI's are).
    def image_url(self, request: Request, job_id: str) -> str:
        expires = int(time.time()) + self.store.image_ttl
        base = (self.settings.api_public_url or str(request.base_url)).rstrip("/")
        return f"{base}/v1/jobs/{job_id}/image?expires={expires}&signature={self._sign(job_id, expires)}"

    def _sign(self, job_id: str, expires: int) -> str:
        return hmac.new(self.url_secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed(self, job_id: str, expires: str | None, signature: str | None) -> bool:
        if not expires or not signature or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._sign(job_id, int(expires)), signature)


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
    try:
        return await asyncio.wait_for(events.get(), timeout_s)
    except TimeoutError:
        return None


async def read_json(request: Request, limit: int, timeout_s: float) -> tuple[Any, bytes]:
    """The body as JSON (and its bytes), within the size and time bounds."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, f"the body is larger than {limit} bytes", code="body_too_large")
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, f"send the body as application/json, not {content_type}", code="unsupported_media_type")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ApiError(413, f"the body is larger than {limit} bytes", code="body_too_large")

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {timeout_s:g} s", type="timeout",
                       code="body_timeout") from None
    try:
        return orjson.loads(body), bytes(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"the body is not valid JSON: {error}", code="invalid_json") from None


def record_view(record: JobRecord) -> dict[str, Any]:
    """A record as the api shows it: the store's image key is internal."""
    data = record.model_dump(mode="json", exclude={"image_key"})
    data["latency_s"] = record.latency_s
    return data


def job_from_body(data: Any, tenant: str, job_id: str) -> Job:
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object (the Job contract, docs/job.schema.json)")
    if "job_id" in data:
        raise bad_request("the api assigns job ids; send an Idempotency-Key header to make a retry safe",
                          param="job_id")
    if "tenant" in data:
        raise bad_request("the tenant comes from the API key", param="tenant")
    try:
        return Job.model_validate({**data, "job_id": job_id, "tenant": tenant})
    except ValidationError as error:
        raise from_validation(error) from None


def idempotency_digest(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise bad_request(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters",
                          param="Idempotency-Key")
    try:
        check_printable(key, "Idempotency-Key")
    except ValueError as error:
        raise bad_request(str(error), param="Idempotency-Key") from None
    return hashlib.sha256(key.encode()).hexdigest()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its own body (to bound its size and time)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


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
    async def images_generations(request: Request) -> JSONResponse:
        caller = await api.caller(request)
        data, _ = await read_json(request, settings.api_max_body_bytes, settings.api_body_timeout_s)
        try:
            images = ImagesRequest.model_validate(data)
        except ValidationError as error:
            metrics.observe_api_refused(caller.tenant, "invalid")
            raise from_validation(error) from None
        jobs = jobs_for(images, caller.tenant, settings.slo_s, settings.api_max_n,
                        [new_job_id() for _ in range(images.n)])
        api.check_room(caller.tenant)
        with api.waiting():
            await api.accept(caller, jobs)
            deadline = max(job.effective_deadline(settings.slo_s) for job in jobs)
            records = await api.wait_terminal([job.job_id for job in jobs], deadline + settings.api_wait_grace_s)
        await api.store.release_slots(caller.tenant, list(records))
        if len(records) < len(jobs):
            raise ApiError(408, f"{len(jobs) - len(records)} of {len(jobs)} images not ready within the "
                           f"objective; GET /v1/jobs/{{id}} follows them: {[j.job_id for j in jobs]}",
                           type="timeout", code="not_ready_in_time")
        for job in jobs:
            if records[job.job_id].state is not JobState.done:
                raise unserved_error(records[job.job_id])
        response_format = images.response_format or "b64_json"
        pngs = await api.store.get_images([job.job_id for job in jobs]) if response_format == "b64_json" \
            else [None] * len(jobs)
        data_out = [image_data(records[job.job_id], png, response_format, api.image_url(request, job.job_id))
                    for job, png in zip(jobs, pngs, strict=True)]
        return JSONResponse({"created": int(time.time()), "data": data_out, "output_format": "png",
                             "size": f"{jobs[0].width}x{jobs[0].height}"})

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
        query = request.query_params
        if valid_job_id(job_id) and api.signed(job_id, query.get("expires"), query.get("signature")):
            record = await api.store.get(job_id)
            if record is None:
                raise not_found()
        else:
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
        api.check_room(caller.tenant)
        give_up_at = (record.deadline or time.time() + settings.slo_s) + STREAM_GRACE_S
        return StreamingResponse(event_stream(api, caller.tenant, job_id, give_up_at), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/v1/jobs/{job_id}", tags=["Jobs"], summary="Cancel a job that is still queued")
    async def cancel_job(job_id: str, request: Request) -> dict:
        caller = await api.caller(request)
        record = await api.own_record(caller, job_id)
        if record.state not in CANCELLABLE:
            raise ApiError(409, f"the job is {record.state.value}; only a queued job can be cancelled",
                           code="not_cancellable")
        reason = "cancelled by the client (DELETE /v1/jobs)"
        outcome = await api.store.apply(Change(job_id, JobState.failed, {"error": reason}, detail=reason))
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
        return JSONResponse({"status": "ok", "ingress_consumers": consumers, "waiters": api.waiters})

    app.add_middleware(HeaderLimit, limit=settings.api_max_header_bytes)
    app.add_middleware(RequestMetrics)
    return app


async def event_stream(api: Api, tenant: str, job_id: str, give_up_at: float) -> AsyncIterator[bytes]:
    """The record's history as events (`event: state`), then each new change, until the terminal
    one; a comment line every KEEPALIVE_S; `event: timeout` if the job is still open at give_up_at."""
    sent = 0
    last_sent_at = time.monotonic()
    with api.waiting(), api.hub.subscribe([job_id]) as events:
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


class RequestMetrics:
    """Counts every answer by route template, status and tenant (pure ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            tenant = scope.get("state", {}).get("tenant", ANONYMOUS)
            metrics.observe_api_request(route, status, tenant, time.monotonic() - started)


class HeaderLimit:
    """431 for a request line and headers larger than HADIS_API_MAX_HEADER_BYTES together. The HTTP
    server bounds headers that arrive in pieces (h11's incomplete-event limit) but not ones that
    arrive in one read; this bounds both."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
                sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                error = ApiError(431, f"the request's headers are larger than {self.limit} bytes",
                                 code="headers_too_large")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn inside the service's loop; the service owns SIGTERM/SIGINT (shared/service.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_for(app: FastAPI, api: Api) -> _Server:
    settings = api.settings
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, http="h11", lifespan="off", log_config=None,
        access_log=False, server_header=False, limit_concurrency=settings.api_max_connections,
        h11_max_incomplete_event_size=settings.api_max_header_bytes, timeout_keep_alive=5,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or 1)
    return _Server(config)


async def main(service: Service) -> None:
    hub = EventHub(service.store)
    await hub.start()
    api = Api(service, hub, await service.store.url_secret())
    server = server_for(create_app(api), api)
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
