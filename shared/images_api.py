"""The HTTP api's request and response shapes, and the rules that turn a request into jobs.

Framework-free (pydantic only), so the rules are tested without a server. `services/api/` serves
them.

**The OpenAI Images API** (`POST /v1/images/generations`), as OpenAI's clients send it:
`prompt`, `n` (1 to HADIS_API_MAX_N), `size` (`WIDTHxHEIGHT`, each 64-2048 and a multiple of 8, or
`auto` = 512x512), `response_format` (`b64_json`, the default, or `url`), `output_format` (`png`, the
default, `jpeg` or `webp`: the worker encodes the image once in it, and `b64_json`, the URL's
`Content-Type` and the response's `output_format` follow it), `output_compression` (0-100, the jpeg
and webp encoders' quality, 100 by default; ignored for png, which is lossless), `user` (kept in the
job's metadata), `quality`, `style` (accepted and ignored), and `model`:

* `quality` picks the way through the cascade (shared/policies/quality.py, docs/jobs.md): `low` the
  light model only, `high` the heavy model only (503 `heavy_unavailable` when the heavy model cannot
  finish by the deadline at the current load, or the plan has none), `medium` and `auto` (the
  default) the cascade, which picks the model per prompt within the latency objective. dall-e-3's
  `standard` is `medium` and `hd` is `high`; `xhigh` and `max` are `high`.

* `model` names a latency class. `hadis` (the default) is the deployment's SLO (HADIS_SLO_S).
  `hadis-<N>s` asks for an SLO of N seconds (1-3600), e.g. `hadis-10s`. OpenAI's own image model
  names (`dall-e-2`, `dall-e-3`, `gpt-image-1`, `gpt-image-1-mini`) are aliases of `hadis`, so
  clients that hard-code one work unchanged. Anything else is 404 `model_not_found`.

* `stream: true` answers server-sent events as OpenAI's image streaming does: up to `partial_images`
  (0-3) `image_generation.partial_image` events (previews of the intermediate steps, at most 256 px a
  side, in the request's output_format), then one `image_generation.completed` with the image
  (services/api/previews.py; docs/jobs.md, Previews). `partial_images` without `stream` is accepted
  and ignored, as OpenAI does. A stream carries one image (its events have no image index): `n`
  other than 1 is refused, as is `response_format: url` (the events carry `b64_json`).

* `priority` (hadis's own field; the `openai` package sends it with `extra_body={"priority": "batch"}`)
  is the service class (docs/jobs.md, Service classes): `interactive` (the default) or `batch`. A batch
  request waits as an interactive one does, up to its deadline plus HADIS_API_WAIT_GRACE_S, its
  objective HADIS_BATCH_SLO_S unless `model` names one (`hadis-<N>s`), and holds a waiter of the
  tenant meanwhile (HADIS_API_MAX_WAITERS*). It is not streamed: `stream` with `batch` is refused
  (previews are for someone watching). Batch work that nobody waits on belongs on `POST /v1/jobs`.

Fields OpenAI has and hadis cannot honour (a transparent `background`, other output formats such as
gif or svg) are refused with 400 naming the field, never silently dropped."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.policies import quality as quality_rules
from shared.policies import tenancy
from shared.policies.previews import MAX_PARTIAL_IMAGES
from shared.schemas import MAX_SIDE, MAX_SLO_S, MEDIA_TYPES, MIN_SIDE, Job, JobRecord, Priority, check_printable

DEFAULT_MODEL = "hadis"
OPENAI_ALIASES = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini")
_SLO_MODEL_RE = re.compile(r"hadis-([0-9]{1,4})s")
_SIZE_RE = re.compile(r"([0-9]{2,4})x([0-9]{2,4})")
DEFAULT_SIZE = (512, 512)
MAX_USER_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 255


class ApiError(Exception):
    """An error the api answers in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(what: str = "job") -> ApiError:
    # The same answer for "no such job" and "another tenant's job": an id reveals nothing.
    return ApiError(404, f"no such {what}", code="not_found")


class ImagesRequest(BaseModel):
    """The body of `POST /v1/images/generations`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(description="What to draw (the Job contract's bounds apply).")
    model: str | None = Field(default=None, description="A latency class: hadis, hadis-<N>s, or an OpenAI alias.")
    n: int = Field(default=1, ge=1, description="How many images (separate jobs, distinct seeds).")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT (64-2048, multiples of 8) or auto (512x512).")
    response_format: Literal["b64_json", "url"] | None = Field(default=None, description="Default b64_json.")
    output_format: Literal["png", "jpeg", "webp"] | None = Field(default=None, description="Default png.")
    output_compression: int | None = Field(default=None, ge=0, le=100,
                                           description="jpeg and webp: 0-100, default 100 (png: ignored).")
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS, description="Kept in the job's metadata.")
    quality: str | None = Field(default=None, max_length=32,
                                description="low, medium, high, auto (default); standard = medium, hd = high.")
    style: str | None = Field(default=None, max_length=32, description="Accepted and ignored.")
    moderation: str | None = Field(default=None, max_length=32, description="Accepted and ignored.")
    background: Literal["auto", "opaque"] | None = None
    stream: bool | None = Field(default=None, description="Server-sent events: partial images, then the image.")
    partial_images: int | None = Field(default=None, ge=0, le=MAX_PARTIAL_IMAGES,
                                       description="With stream: previews before the image (0-3).")
    priority: Priority | None = Field(default=None, description="The service class: interactive (default) or "
                                                                 "batch (not with stream).")

    @field_validator("user")
    @classmethod
    def user_is_printable(cls, user: str | None) -> str | None:
        return check_printable(user, "user") if user is not None else None


def slo_of_model(model: str | None, default_slo_s: float) -> float:
    """The latency objective a `model` asks for (see the module's docstring)."""
    if model is None or model == DEFAULT_MODEL or model in OPENAI_ALIASES:
        return default_slo_s
    match = _SLO_MODEL_RE.fullmatch(model)
    if match and 1 <= int(match.group(1)) <= MAX_SLO_S:
        return float(match.group(1))
    raise ApiError(404, f"model {model!r} does not exist; GET /v1/models lists them", param="model",
                   code="model_not_found")


def parse_size(size: str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return DEFAULT_SIZE
    match = _SIZE_RE.fullmatch(size)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        if all(MIN_SIDE <= side <= MAX_SIDE and side % 8 == 0 for side in (width, height)):
            return width, height
    raise bad_request(f"size must be WIDTHxHEIGHT, each {MIN_SIDE}-{MAX_SIDE} and a multiple of 8, or auto; "
                      f"not {size!r}", param="size")


def jobs_for(request: ImagesRequest, tenant: str, default_slo_s: float, max_n: int,
             new_id: Callable[[], str], batch_slo_s: float | None = None) -> list[Job]:
    """The jobs an images request becomes: one per image, each with its own seed and id. `n` is
    checked before anything proportional to it is made (an `n` of 10⁹ costs nothing). The default
    objective is the class's: `default_slo_s`, or `batch_slo_s` for a batch request."""
    if request.n > max_n:
        raise bad_request(f"n must be at most {max_n}", param="n")
    if request.stream and request.n != 1:
        raise bad_request("a stream carries one image: n must be 1 with stream", param="n")
    if request.stream and request.response_format == "url":
        raise bad_request("a stream's events carry b64_json: response_format url is not streamed",
                          param="response_format")
    priority: Priority = request.priority or "interactive"
    if request.stream and priority == "batch":
        raise bad_request("batch jobs are not streamed (nobody watches them): send it without stream, or POST "
                          "/v1/jobs and follow the job", param="priority")
    partial_images = (request.partial_images or 0) if request.stream else 0
    job_ids = [new_id() for _ in range(request.n)]
    class_slo_s = batch_slo_s if priority == "batch" and batch_slo_s is not None else default_slo_s
    slo_s = slo_of_model(request.model, class_slo_s)
    width, height = parse_size(request.size)
    try:
        quality = quality_rules.normalize(request.quality)
    except ValueError as error:
        raise bad_request(str(error), param="quality") from None
    metadata: dict[str, str | int | float | bool | None] = {"api": "images"}
    if request.user is not None:
        metadata["user"] = request.user
    submitted_at = time.time()
    seeds = [secrets.randbits(32) for _ in job_ids]
    try:
        return [Job(job_id=job_id, prompt=request.prompt, width=width, height=height, slo_s=slo_s, seed=seed,
                    submitted_at=submitted_at, tenant=tenant, metadata=metadata,
                    output_format=request.output_format or "png", output_compression=request.output_compression,
                    quality=quality, partial_images=partial_images, priority=priority)
                for job_id, seed in zip(job_ids, seeds, strict=True)]
    except ValidationError as error:
        raise from_validation(error) from None


def from_validation(error: ValidationError) -> ApiError:
    """A pydantic error as one readable 400: the first problem, with the field it is about."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"] if param is None else f"{param}: {first['msg']}"
    more = len(error.errors()) - 1
    return bad_request(message + (f" (and {more} more)" if more else ""), param=param)


def image_data(record: JobRecord, image: bytes | None, response_format: str, url: str) -> dict:
    """One entry of the response's `data`: the image's bytes in its own format (the job's)."""
    if response_format == "url":
        return {"url": url, "revised_prompt": None}
    if image is None:
        raise ApiError(500, "the job is done but its image is no longer stored", type="server_error",
                       code="image_missing")
    return {"b64_json": base64.b64encode(image).decode(), "revised_prompt": None}


def sniff_format(image: bytes) -> str | None:
    """The output format of encoded bytes, from their signature: a fallback for a record that does
    not say (one written before records kept it). None for anything else."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if image.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    return None


def image_format(record: JobRecord, image: bytes | None = None) -> str:
    """The format of a job's image: the record's, else the bytes' (sniff_format), else png."""
    if record.output_format in MEDIA_TYPES:
        return record.output_format
    return (sniff_format(image) if image is not None else None) or "png"


def unserved_error(record: JobRecord) -> ApiError:
    """The answer for a job that ended without an image."""
    reason = record.error or record.state.value
    if record.state.value == "expired":
        return ApiError(408, f"the job's deadline passed before it was served: {reason}", type="timeout",
                        code="deadline_exceeded")
    if record.state.value == "cancelled":
        return ApiError(409, f"the job was cancelled: {reason}", code="job_cancelled")
    if reason.startswith("422"):
        return bad_request(f"the job was refused: {reason}", code="invalid_job")
    if reason.startswith("503 HeavyUnavailable"):
        return ApiError(503, f"the job was refused: {reason}", type="server_error", code="heavy_unavailable",
                        param="quality")
    return ApiError(500, f"the job failed: {reason}", type="server_error", code="job_failed")


def models_list(created: int) -> dict:
    """`GET /v1/models`: the latency classes (see the module's docstring)."""
    names = [DEFAULT_MODEL, "hadis-<N>s", *OPENAI_ALIASES]
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "hadis"}
                                       for name in names]}


def record_view(record: JobRecord) -> dict[str, Any]:
    """A record as the api shows it: the store's image key is internal, and the step of a job no
    longer generating is not shown (it was its last batch's, stopped wherever the writes left it).
    A record from before service classes is interactive (what it was served as)."""
    data = record.model_dump(mode="json", exclude={"image_key"})
    data["priority"] = record.priority or "interactive"
    if record.state.value != "generating":
        data["step"] = data["steps"] = None
    data["latency_s"] = record.latency_s
    return data


def job_from_body(data: Any, tenant: str, job_id: str) -> Job:
    """The job a `POST /v1/jobs` body asks for: the Job contract, less what the api sets itself
    (the id, the tenant, the time it was submitted), with a deadline the fleet can serve."""
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object (the Job contract, docs/job.schema.json)")
    if "job_id" in data:
        raise bad_request("the api assigns job ids; send an Idempotency-Key header to make a retry safe",
                          param="job_id")
    if "tenant" in data:
        raise bad_request("the tenant comes from the API key", param="tenant")
    if "submitted_at" in data:
        raise bad_request("the api stamps submitted_at when it accepts the job (it starts the objective); set "
                          "slo_s or deadline instead", param="submitted_at")
    try:
        job = Job.model_validate({**data, "job_id": job_id, "tenant": tenant})
    except ValidationError as error:
        raise from_validation(error) from None
    problem = tenancy.deadline_problem(job.deadline, time.time(), MAX_SLO_S)
    if problem is not None:
        raise bad_request(problem, param="deadline")
    return job


def idempotency_digest(key: str | None) -> str | None:
    """The SHA-256 of a valid Idempotency-Key header (what the store keeps of it); None without one."""
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
