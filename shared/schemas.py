"""Every message on the bus and every record in the store, as pydantic models.

The ingress `Job` is the public contract (its JSON Schema is exported to
`docs/job.schema.json`); the other models are internal to the services.
"""

from __future__ import annotations

import re
import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from shared.errors import InvalidJob

# Bounds on everything a caller controls. Documented in docs/jobs.md.
MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 4096  # of its JSON encoding
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_CHARS = 64
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_SLO_S = 3600.0
MAX_MESSAGE_BYTES = 64 * 1024
# submitted_at and deadline are Unix times in [2000-01-01, 2100-01-01]: finite, and plausible.
MIN_TIMESTAMP, MAX_TIMESTAMP = 946_684_800.0, 4_102_444_800.0

# A job id is part of Redis keys (`<ns>:job:<id>`, `<ns>:job:<id>:history`, `<ns>:image:<id>`,
# `<ns>:image:<id>:light`, `<ns>:done:<id>`), so it may not contain ':', the key separator: the
# id `X:history` would otherwise name job X's history. ASCII letters, digits, `_ . -`, 1-128 of them,
# the whole string (no trailing newline either).
MAX_JOB_ID_CHARS = 128
_JOB_ID_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_JOB_ID_CHARS}}}")
JOB_ID_PATTERN = f"^{_JOB_ID_RE.pattern}$"  # the same rule in JSON Schema (ECMA-262: `$` is the very end)

# A tenant (the HTTP api's unit of keys, quotas and visibility) is named in metrics labels, logs and
# job records: lower-case ASCII letters, digits, `_` and `-`, 1-64 characters, not starting with `_`/`-`.
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TENANT_PATTERN = f"^{_TENANT_RE.pattern}$"

# The formats a job's image may be encoded in (once, by the worker that made it), and their media
# types: the api answers the record's, so it never sniffs bytes. output_compression is OpenAI's:
# 0-100, the lossy formats' quality setting (100: the least loss); a PNG ignores it (it is lossless).
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OutputFormat = Literal["png", "jpeg", "webp"]
# What a caller may ask of the cascade (shared/policies/quality.py): low = the light model only,
# high = the heavy model only (refused when it cannot make the deadline), medium and auto = the cascade.
QUALITIES = ("low", "medium", "high", "auto")
QualityName = Literal["low", "medium", "high", "auto"]
# The service classes (docs/classes.md): interactive, a person waits (the SLO, planned for); batch,
# nobody watches (its own objective; served on the capacity the interactive plan leaves).
Priority = Literal["interactive", "batch"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")

# Control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) other than tab, newline
# and carriage return: refused in every text a caller sends (they garble logs and terminals).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def valid_job_id(text: object) -> bool:
    """The one rule for a job id, applied by `Job` and by `job_id_of` alike."""
    return isinstance(text, str) and _JOB_ID_RE.fullmatch(text) is not None


def valid_tenant(name: object) -> bool:
    return isinstance(name, str) and _TENANT_RE.fullmatch(name) is not None


def _checked_job_id(job_id: str) -> str:
    if not valid_job_id(job_id):
        raise ValueError(f"job_id must be 1-{MAX_JOB_ID_CHARS} characters of A-Z a-z 0-9 _ . - "
                         "(':' separates the parts of Redis keys)")
    return job_id


def check_printable(text: str, what: str) -> str:
    """Refuse control characters other than tab, newline and carriage return."""
    if _CONTROL_RE.search(text):
        raise ValueError(f"{what} contains control characters")
    return text


JobId = Annotated[
    str,
    AfterValidator(_checked_job_id),
    WithJsonSchema({"type": "string", "pattern": JOB_ID_PATTERN, "minLength": 1, "maxLength": MAX_JOB_ID_CHARS}),
]
UnixTime = Annotated[float, Field(ge=MIN_TIMESTAMP, le=MAX_TIMESTAMP, allow_inf_nan=False)]


# A webhook URL (docs/jobs.md, Webhooks): http or https, a host, at most MAX_WEBHOOK_URL_CHARS, no
# user name or password (they would travel as a header and show in every record), no fragment, no
# spaces or control characters. Where it may point is the sender's to judge (it resolves the host).
MAX_WEBHOOK_URL_CHARS = 2048
WEBHOOK_URL_PATTERN = r"^https?://[^\s/?#@]+([/?][^\s#]*)?$"
_WEBHOOK_URL_RE = re.compile(WEBHOOK_URL_PATTERN)


def check_webhook_url(url: str) -> str:
    """The one rule for a webhook URL, applied by `Job` and by `hadis webhook set` alike."""
    if len(url) > MAX_WEBHOOK_URL_CHARS or not _WEBHOOK_URL_RE.match(url) or _CONTROL_RE.search(url):
        raise ValueError(f"webhook_url must be an http:// or https:// URL of at most {MAX_WEBHOOK_URL_CHARS} "
                         "characters, without user info, fragment or spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"webhook_url: {error}") from None
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        raise ValueError("webhook_url names no host, or port 0")
    return url


WebhookUrl = Annotated[
    str,
    AfterValidator(check_webhook_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": WEBHOOK_URL_PATTERN,
                    "maxLength": MAX_WEBHOOK_URL_CHARS}),
]


def new_job_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=Strict)


class Tier(StrEnum):
    light = "light"
    heavy = "heavy"


class JobState(StrEnum):
    queued = "queued"
    routed = "routed"
    generating = "generating"
    judging = "judging"
    escalated = "escalated"
    done = "done"
    failed = "failed"
    expired = "expired"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.done, JobState.failed, JobState.expired, JobState.cancelled})

# The order of a job's steps: a record moves only to a later rank, so a late redelivery cannot undo
# a step. `generating` ranks by its tier (`generating:light` before the judge, `generating:heavy`
# after the escalation); every terminal state has TERMINAL_RANK, so a terminal state is final. The
# store's transition script (shared/store/transition.lua) gets this table from here, prepended to
# its source when it is loaded: the Python and the Lua cannot disagree.
TERMINAL_RANK = 9
STATE_RANKS: dict[str, int] = {
    "queued": 0, "routed": 1, "generating:light": 2, "judging": 3, "escalated": 4, "generating:heavy": 5,
    **{state.value: TERMINAL_RANK for state in sorted(TERMINAL_STATES)},
}


def state_rank(state: JobState, tier: str | None = None) -> int:
    """A state's rank in STATE_RANKS; `generating` on no tier is the light step (as in the script)."""
    if state is JobState.generating:
        return STATE_RANKS[f"generating:{'heavy' if tier == 'heavy' else 'light'}"]
    return STATE_RANKS[state.value]


class Job(Strict):
    """What another backend publishes to the ingress queue `<ns>.requests`."""

    # No NaN or infinity anywhere in a job (slo_s, deadline, submitted_at, metadata values).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    job_id: JobId = Field(default_factory=new_job_id, description="Idempotency key: a job id is served once.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    width: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    height: int = Field(default=512, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    slo_s: float | None = Field(default=None, gt=0, le=MAX_SLO_S, description="Latency objective from submitted_at.")
    deadline: UnixTime | None = Field(default=None,
                                      description="Unix time after which the job is expired, not generated.")
    submitted_at: UnixTime = Field(default_factory=now, description="Unix time the caller submitted the job.")
    tenant: str | None = Field(
        default=None, pattern=TENANT_PATTERN,
        description="Who the job is for. The HTTP api sets it from the caller's key (a tenant sees only its own "
                    "jobs there); over AMQP the router sets it from the producer's broker user unless that is the "
                    "services' own (docs/security.md).")
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Stored with the record, never interpreted.",
        json_schema_extra={"maxProperties": MAX_METADATA_KEYS, "propertyNames": {"maxLength": MAX_METADATA_KEY_CHARS}})
    output_format: OutputFormat = Field(default="png", description="The image's encoding, made once by its worker.")
    output_compression: int | None = Field(
        default=None, ge=0, le=100,
        description="jpeg and webp: the encoder's quality, 0-100 (100, the default: the least loss); png: ignored.")
    quality: QualityName = Field(
        default="auto", description="low: the light model only; high: the heavy model only (failed with 503 when it "
                                    "cannot meet the deadline); medium, auto: the cascade (docs/jobs.md).")
    partial_images: int = Field(
        default=0, ge=0, le=3, description="Previews while it generates (0-3, OpenAI's partial_images): small "
                                           "images of its intermediate steps (docs/jobs.md, Previews).")

    webhook_url: WebhookUrl | None = Field(
        default=None, description="Where hadis POSTs the job's terminal event (docs/jobs.md, Webhooks); unset: the "
                                  "tenant's default, if any.")
    priority: Priority = Field(
        default="interactive",
        description="The service class (docs/classes.md): interactive, a person waits (the SLO, HADIS_SLO_S); batch, "
                    "nobody watches (HADIS_BATCH_SLO_S by default), served on the capacity interactive work leaves, "
                    "at the best quality it allows.")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def text_is_printable(cls, text: str, info: ValidationInfo) -> str:
        if info.field_name == "prompt" and not text.strip():
            raise ValueError("prompt is blank")
        return check_printable(text, info.field_name or "text")

    @field_validator("metadata")
    @classmethod
    def metadata_is_small(cls, metadata: dict) -> dict:
        if len(metadata) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata has more than {MAX_METADATA_KEYS} keys")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"metadata key is longer than {MAX_METADATA_KEY_CHARS} characters")
            check_printable(key, "metadata key")
            if isinstance(value, str):
                check_printable(value, "metadata value")
        try:
            size = len(orjson.dumps(metadata))
        except orjson.JSONEncodeError as error:  # an integer beyond 64 bits
            raise ValueError(f"metadata does not encode as JSON: {error} (integers must fit in 64 bits)") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
        return metadata

    def record_fields(self, deadline: float) -> dict[str, Any]:
        """What a job record keeps of the job (the router and the api write the same fields)."""
        return {"prompt": self.prompt, "submitted_at": self.submitted_at, "deadline": deadline,
                "metadata": self.metadata, "tenant": self.tenant, "output_format": self.output_format,
                "quality": self.quality, "webhook_url": self.webhook_url, "priority": self.priority}

    def effective_deadline(self, default_slo_s: float, batch_slo_s: float | None = None) -> float:
        """The deadline, else submitted_at + the job's SLO, else its class's (`default_slo_s` for
        interactive, `batch_slo_s` for batch; Settings.class_slo_s); never beyond MAX_TIMESTAMP."""
        if self.deadline is not None:
            return self.deadline
        default = batch_slo_s if self.priority == "batch" and batch_slo_s is not None else default_slo_s
        return min(self.submitted_at + (self.slo_s or default), MAX_TIMESTAMP)


class Task(Strict):
    """A routed job travelling between the router, the workers and the judge."""

    job: Job
    deadline: UnixTime
    tier: Tier
    router_score: float | None = None
    escalated: bool = False
    plan_version: int = 0
    model: str | None = Field(default=None, description="The model that generated the light image (judge tasks).")
    held_for: str | None = Field(default=None, max_length=200,
                                 description="The plan point against which the router's burst guard sent it light "
                                             "(engine.held_point): the judge escalates it up to that plan's heavy "
                                             "share while the point holds (engine.verdict).")


class Plan(Strict):
    """The controller's decision, versioned; every service applies the newest."""

    version: int = Field(ge=0)
    light_model: str
    heavy_model: str
    r: float = Field(ge=0.0, le=1.0, description="Fraction of prompts routed straight to heavy.")
    d: float = Field(ge=0.0, le=1.0, description="Fraction of light outputs escalated by the judge.")
    light_batch: int = Field(ge=1, le=64)
    heavy_batch: int = Field(ge=1, le=64)
    light_gpus: int = Field(default=1, ge=0)
    heavy_gpus: int = Field(default=1, ge=0)
    assignment: dict[str, Tier] = Field(default_factory=dict, description="GPU id -> the tier its worker serves.")
    low_share: float = Field(default=0.0, ge=0.0, le=1.0,
                             description="Share of arrivals asking quality=low (light only), as planned for.")
    high_share: float = Field(default=0.0, ge=0.0, le=1.0,
                              description="Share of arrivals asking quality=high (heavy only), within r.")
    fid: float | None = Field(default=None, description="Expected FID of the configuration, when profiled.")
    burst_qps: float | None = Field(default=None, ge=0.0,
                                    description="The burst guard: arrivals per second (twice the rate the point "
                                                "was chosen for, or just under what it carries on its GPUs when "
                                                "more) beyond which r was not chosen for them. A router "
                                                "whose last second's count is beyond it routes nothing by score "
                                                "(a burst the controller has not yet seen). None: r holds at any "
                                                "rate.")
    # The batch class (shared/policies/classes.py): where its jobs go, and the GPUs reserved for it.
    batch_heavy: float = Field(default=1.0, ge=0.0, le=1.0,
                               description="Share of batch jobs routed to the heavy tier (the rest: light).")
    batch_first: list[str] = Field(default_factory=list,
                                   description="GPUs whose workers take batch jobs before interactive ones: capacity "
                                               "reserved because batch deadlines come near.")
    created_at: float = Field(default_factory=now)
    reason: str = ""

    @property
    def heavy_share(self) -> float:
        return self.r + (1.0 - self.r) * self.d

    def batch_for(self, tier: Tier) -> int:
        return self.light_batch if tier is Tier.light else self.heavy_batch

    def model_for(self, tier: Tier) -> str:
        return self.light_model if tier is Tier.light else self.heavy_model


class Transition(Strict):
    state: JobState
    at: float
    detail: str = ""


class JobRecord(Strict):
    """The job as Redis holds it; `hadis status` prints this."""

    job_id: str
    state: JobState
    prompt: str = ""
    submitted_at: float | None = None
    deadline: float | None = None
    tier: Tier | None = None
    model: str | None = None
    router_score: float | None = None
    judge_score: float | None = None
    escalated: bool = False
    plan_version: int | None = None
    error: str | None = None
    tenant: str | None = None
    image_key: str | None = None
    output_format: str | None = None  # the image's encoding (None: a record from before it was kept: png)
    quality: str | None = None
    webhook_url: str | None = None
    priority: str | None = None  # the service class (None: a record from before classes: interactive)
    metadata: dict[str, Any] = Field(default_factory=dict)
    history: list[Transition] = Field(default_factory=list)
    # While `generating`: the denoising steps the model has finished, of how many (the worker writes
    # them at most twice a second a batch, shared/store/progress.py); kept after, as the last seen.
    step: int | None = None
    steps: int | None = None

    @property
    def latency_s(self) -> float | None:
        if self.submitted_at is None or not self.state.terminal or not self.history:
            return None
        return self.history[-1].at - self.submitted_at


def job_id_of(body: bytes) -> str | None:
    """The job id of a raw message (a Job or a Task), if one can be read from it: used to
    write a `failed` record for a message too broken to parse as a whole. The JSON is read by
    the parser `parse_message` uses (it reads NaN, Infinity and 1e999, which the model then
    refuses), and the id must pass `valid_job_id`, as in a `Job`. A body over MAX_MESSAGE_BYTES
    is not read at all (None): parsing costs up to several times the body's size in memory (a
    16 MiB array of numbers: 64 MiB), and it is done exactly for the messages nobody vouches for."""
    if len(body) > MAX_MESSAGE_BYTES:
        return None
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("job"), dict):
        data = data["job"]
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if valid_job_id(job_id) else None


def parse_message(model: type[M], body: bytes) -> M:
    """Parse a message body strictly, turning any problem into a readable InvalidJob."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidJob(f"message is {len(body)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in error.errors()[:5]
        )
        raise InvalidJob(f"invalid {model.__name__}: {problems}") from None
