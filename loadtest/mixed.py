"""The mixed scenario (`--http-route mixed`, issue 32): the trace replayed through the HTTP api as
HttpJobUser does, each arrival drawn (seeded, `--mix-seed`; shares `--mix`) as one of the api's
features, each checked end to end and reported as its own Locust row (type `feature`, named by
kind), so that the CSV and HTML give per-feature latency:

* `plain`: `POST /v1/jobs`, its SSE stream to the end, the image (a PNG, by its magic bytes);
* `jpeg`, `webp`: the same with `output_format` (and `output_compression` 80): the image's
  Content-Type and magic bytes must be the format's;
* `webhook`: the same with `webhook_url` at the receiver this process runs on 127.0.0.1
  (loadtest/webhook_receiver.py): each delivery's signature is verified with the tenant's secret,
  and each ended job must get exactly one verified delivery within --webhook-timeout of its end;
* `cancel`: `DELETE /v1/jobs/{id}` after a random delay up to --cancel-max-delay: answered 200 and
  the job ends `cancelled`, or 409 and it had ended first (done, failed, expired);
* `low`, `high`: `quality`; a high job the router refuses (`503 HeavyUnavailable`) or its heavy
  worker sheds (`expired`, docs/jobs.md, Quality) is `refused`, as documented, not a failure;
* `stream`: `POST /v1/images/generations` with `stream: true, partial_images: 2`, read as SSE: the
  `image_generation.partial_image` events are counted, the `image_generation.completed` one must
  carry the image (and `stream first partial` is a row of its own: the time to the first preview).

What makes the run fail (exit code 1, see `violations`): a job lost (not terminal within the job
timeout, or still open when the run ended), failed or expired (other than high's refusals), a
submission refused (other than high's 503), a done job whose image is missing or of the wrong
format, a cancel answered other than 200/409 or whose answer disagrees with the job's end, a
stream without its completed event, a webhook job without a verified delivery within the bound,
or a delivery with a bad signature. Duplicates (at least once) and late deliveries are reported.
A delivery the stack refused to make (`failed` at once: 127.0.0.1 is not allowed, see
HADIS_WEBHOOK_ALLOW_*) is counted as `refused_address`, not as missing or lost, with the stack's
error; it fails the run too (a violation of its own, with a warning naming the setting), since the
run has then not checked what it was asked to.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import gevent

from loadtest.webhook_receiver import Delivery, Receiver, read_secrets
from shared.images_api import sniff_format as image_format  # by magic bytes: no image library needed

log = logging.getLogger("hadis.loadtest")

KINDS = ("plain", "jpeg", "webp", "webhook", "cancel", "low", "high", "stream")
DEFAULT_MIX = "plain=0.3,jpeg=0.1,webp=0.1,webhook=0.15,cancel=0.1,low=0.1,high=0.05,stream=0.1"
EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "jpeg": {"output_format": "jpeg", "output_compression": 80},
    "webp": {"output_format": "webp", "output_compression": 80},
    "low": {"quality": "low"},
    "high": {"quality": "high"},
}
PARTIAL_IMAGES = 2
WEBHOOK_POLL_S = 2.0  # how often a job waiting for its delivery asks the api for the delivery's state
LF: Any = None  # the locustfile module (REPLAY, report, sse_events...), bound by it at import
MIX: Mixed | None = None


def bind(locustfile: Any) -> None:
    global LF
    LF = locustfile


def add_arguments(parser) -> None:
    parser.add_argument("--mix", default=DEFAULT_MIX,
                        help="--http-route mixed: kind=share,... of " + ",".join(KINDS) + " (shares are normalised)")
    parser.add_argument("--mix-seed", type=int, default=32, help="--http-route mixed: the draw's seed")
    parser.add_argument("--webhook-tenant", default="loadtest",
                        help="the api key's tenant, whose webhook secret verifies the deliveries")
    parser.add_argument("--webhook-secret", default="", is_secret=True,
                        help="its secret(s), space-separated (HADIS_WEBHOOK_SECRET; default: hadis webhook show)")
    parser.add_argument("--webhook-port", type=int, default=0, help="the receiver's port on 127.0.0.1 (0: free)")
    parser.add_argument("--webhook-timeout", type=float, default=30.0,
                        help="seconds from a job's end within which its delivery must arrive")
    parser.add_argument("--cancel-max-delay", type=float, default=3.0,
                        help="a cancel job's DELETE comes after a uniform delay up to this many seconds")


def parse_mix(text: str) -> dict[str, float]:
    shares: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, share = item.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r}; the kinds are {', '.join(KINDS)}")
        try:
            shares[kind] = float(share)
        except ValueError:
            raise SystemExit(f"--mix: {item!r} is not kind=share") from None
        if not math.isfinite(shares[kind]) or shares[kind] < 0:
            raise SystemExit(f"--mix: {kind}'s share must be a finite number >= 0")
    total = sum(shares.values())
    if total <= 0:
        raise SystemExit("--mix: no kind has a share")
    return {kind: share / total for kind, share in shares.items() if share > 0}


@dataclass
class FeatureTally:
    submitted: int = 0
    done: int = 0
    cancelled: int = 0
    failed: int = 0
    expired: int = 0
    refused: int = 0  # high's documented refusals (503 HeavyUnavailable, or shed: expired)
    not_accepted: int = 0  # a submission the api refused otherwise (a failure)
    lost: int = 0
    bad: int = 0  # ended, but a check failed (image missing or of the wrong format, no completed event...)


@dataclass
class Mixed:
    """The run's draws and counts; one per Locust process."""

    kinds: list[str]
    shares: dict[str, float]
    options: Any
    receiver: Receiver | None = None
    webhook_url: str = ""
    tallies: dict[str, FeatureTally] = field(default_factory=lambda: {kind: FeatureTally() for kind in KINDS})
    webhook_sent: set[str] = field(default_factory=set)  # every webhook job accepted, ended or not
    webhook_jobs: dict[str, float] = field(default_factory=dict)  # job id: when the client saw it end
    webhook_refused: dict[str, str] = field(default_factory=dict)  # job id: the sender's last_error
    in_flight: dict[str, str] = field(default_factory=dict)  # job id or token: kind
    cancel_answers: dict[str, int] = field(default_factory=dict)  # "200", "409", other statuses
    cancel_answer_s: list[float] = field(default_factory=list)
    cancel_mismatch: int = 0
    resubmitted: int = 0  # POST /v1/jobs sent again under its Idempotency-Key after no answer
    partial_events: int = 0
    completed_events: int = 0
    short_streams: int = 0  # done with fewer partial events than asked (reported, not a failure)
    first_partial_s: list[float] = field(default_factory=list)

    def kind_of(self, job) -> str:
        return self.kinds[int(job.metadata["arrival"]) % len(self.kinds)]


def setup(environment, options, arrivals: int) -> str:
    """Draw each arrival's kind, start the webhook receiver and read the tenant's secret; returns
    a line for the start-up log."""
    global MIX
    shares = parse_mix(options.mix)
    draw = random.Random(options.mix_seed)
    kinds = draw.choices(list(shares), weights=list(shares.values()), k=max(arrivals, 1))
    MIX = Mixed(kinds, shares, options)
    if "webhook" in shares:
        secrets = options.webhook_secret.split() or read_secrets(options.webhook_tenant, options.namespace,
                                                                  options.redis_url)
        MIX.receiver = Receiver(secrets, on_delivery=lambda job_id, d: report_delivery(environment, job_id, d))
        MIX.webhook_url = MIX.receiver.start(options.webhook_port)
    counts = {kind: kinds.count(kind) for kind in shares}
    return f"mixed: {counts}, webhooks to {MIX.webhook_url or '(none)'}"


def report_delivery(environment, job_id: str, delivery: Delivery) -> None:
    """Each delivery is a `webhook` row: its delay from the job's end (the event's timestamp)."""
    delay_s = delivery.received_at - delivery.ended_at if delivery.ended_at else 0.0
    error = None if delivery.verified else ValueError("bad signature")
    if delivery.verified and job_id not in MIX.webhook_sent:
        error = ValueError("a delivery for a job this run did not send")
    environment.events.request.fire(request_type="webhook", name="delivery", response_time=max(delay_s, 0) * 1000.0,
                                    response_length=0, exception=error, context={})


# ---- one arrival ---------------------------------------------------------------------------

def run(user, job) -> None:
    """The arrival's kind, seen through to its end (replay_next's submit)."""
    kind = MIX.kind_of(job)
    if kind == "stream":
        run_stream(user, job)
    else:
        run_job(user, job, kind)


def body_of(job, kind: str) -> dict[str, Any]:
    body = job.model_dump(mode="json", include={"prompt", "slo_s", "metadata"})
    body.update(EXTRA_FIELDS.get(kind, {}))
    if kind == "webhook":
        body["webhook_url"] = MIX.webhook_url
    return body


def submit(user, body: dict, kind: str) -> str | None:
    """POST /v1/jobs: the job id (202), else None, counted: high's 503 is `refused`, any other
    refusal `not_accepted` (and a publish error of the summary). With an Idempotency-Key, sent
    again once when no answer came (a kept-alive connection the api closed as the request left:
    status 0), so that such a job is neither lost nor submitted twice."""
    tally = MIX.tallies[kind]
    headers = {**user.auth, "Idempotency-Key": uuid.uuid4().hex}
    for attempt in (1, 2):
        with user.client.post("/v1/jobs", json=body, headers=headers, catch_response=True) as response:
            if response.status_code == 0 and attempt == 1:
                MIX.resubmitted += 1
                response.failure(f"no answer, sent again: {response.error!r}")
                continue
            return accepted(response, kind, tally)
    return None


def accepted(response, kind: str, tally: FeatureTally) -> str | None:
    """submit's answer, counted."""
    if response.status_code == 202:
        tally.submitted += 1
        LF.REPLAY.tally.submitted += 1
        return response.json()["id"]
    if kind == "high" and response.status_code == 503 and "heavy_unavailable" in response.text:
        tally.refused += 1
        LF.REPLAY.tally.refused += 1
        response.success()
    else:
        tally.not_accepted += 1
        LF.REPLAY.tally.publish_errors += 1
        response.failure(LF.api_error(response) if response.status_code else f"no answer: {response.error!r}")
    return None


def run_job(user, job, kind: str) -> None:
    """A job through /v1/jobs: submitted, cancelled (kind cancel), followed to its end, checked."""
    started = time.monotonic()
    job_id = submit(user, body_of(job, kind), kind)
    if job_id is None:
        return
    MIX.in_flight[job_id] = kind
    LF.REPLAY.in_flight[job_id] = started
    if kind == "webhook":
        MIX.webhook_sent.add(job_id)
    try:
        give_up_at = started + LF.REPLAY.job_timeout_s
        cancel_status = cancel_later(user, job_id) if kind == "cancel" else None
        ended_at = user.follow(job_id, give_up_at)
        record = user.record(job_id) if ended_at is not None else None
        latency_s = (ended_at or time.monotonic()) - started
        error = settle(user, kind, job_id, record, cancel_status, latency_s)
        if error is None and kind == "webhook" and record is not None:
            error = await_delivery(user, job_id)
        LF.report(user.environment, kind, latency_s, error, request_type="feature")
    finally:
        MIX.in_flight.pop(job_id, None)
        LF.REPLAY.in_flight.pop(job_id, None)


def cancel_later(user, job_id: str) -> int | None:
    """DELETE /v1/jobs/{id} after a random delay (its own Locust row): the answer's status."""
    gevent.sleep(random.uniform(0.0, MIX.options.cancel_max_delay))
    started = time.monotonic()
    with user.client.delete(f"/v1/jobs/{job_id}", name="/v1/jobs/{id}", headers=user.auth,
                            catch_response=True) as response:
        status = response.status_code
        MIX.cancel_answer_s.append(time.monotonic() - started)
        MIX.cancel_answers[str(status)] = MIX.cancel_answers.get(str(status), 0) + 1
        if status in (200, 409):
            response.success()
        else:
            response.failure(LF.api_error(response))
    return status


def settle(user, kind: str, job_id: str, record: dict | None, cancel_status: int | None,
           latency_s: float) -> Exception | None:
    """Count the job by its end, and check what its kind promises; the error its row reports, if any."""
    tally = MIX.tallies[kind]
    if record is None or record.get("state") not in (*LF.TERMINAL, "cancelled"):
        tally.lost += 1
        LF.REPLAY.tally.lost += 1
        return LF.JobLost(f"not terminal within {LF.REPLAY.job_timeout_s:.0f} s")
    state = record["state"]
    if kind == "webhook":
        MIX.webhook_jobs[job_id] = time.time()
    if cancel_status is not None and (cancel_status == 200) != (state == "cancelled"):
        MIX.cancel_mismatch += 1
        tally.bad += 1
        return LF.JobFailed(f"DELETE answered {cancel_status}, the job ended {state}")
    if state == "cancelled":
        tally.cancelled += 1
        LF.REPLAY.tally.cancelled += 1
        return None if cancel_status == 200 else LF.JobFailed("cancelled, though nobody cancelled it")
    if state != "done":
        return unserved(kind, tally, state, record.get("error") or "")
    LF.count_done(LF.path_of(record), latency_s)
    tally.done += 1
    problem = check_image(user, job_id, record.get("output_format") or "png", expected_format(kind))
    if problem:
        tally.bad += 1
        return LF.JobFailed(problem)
    return None


def unserved(kind: str, tally: FeatureTally, state: str, error: str) -> Exception | None:
    if kind == "high" and (state == "expired" or "HeavyUnavailable" in error):
        tally.refused += 1
        LF.REPLAY.tally.refused += 1
        return None
    if state == "expired":
        tally.expired += 1
    else:
        tally.failed += 1
    LF.REPLAY.tally.count_unserved(state)
    return LF.JobFailed(f"{state}: {error}")


def expected_format(kind: str) -> str:
    return str(EXTRA_FIELDS.get(kind, {}).get("output_format", "png"))


def check_image(user, job_id: str, recorded: str, wanted: str) -> str | None:
    """GET the image: its Content-Type and magic bytes must be the job's format; what is wrong, or None."""
    with user.client.get(f"/v1/jobs/{job_id}/image", name="/v1/jobs/{id}/image", headers=user.auth,
                         catch_response=True) as response:
        if response.status_code != 200:
            response.failure(LF.api_error(response))
            return f"done, but GET image answered {LF.api_error(response)}"
        data, media_type = response.content or b"", response.headers.get("content-type", "")
        found = image_format(data)
        if recorded != wanted or found != wanted or media_type != f"image/{wanted}":
            problem = f"asked {wanted}: record {recorded}, Content-Type {media_type}, bytes {found}"
            response.failure(problem)
            return problem
    return None


def await_delivery(user, job_id: str) -> Exception | None:
    """Wait (bounded: --webhook-timeout from the job's end) for the job's first delivery; asks the
    api for the delivery's state meanwhile, so that one the stack refused to make (the address) ends
    the wait at once. The final counts are the summary's (a duplicate may come later)."""
    arrived = MIX.receiver.event_for(job_id)
    give_up_at = MIX.webhook_jobs[job_id] + MIX.options.webhook_timeout
    while (remaining := give_up_at - time.time()) > 0:
        if arrived.wait(min(remaining, WEBHOOK_POLL_S)):
            return None
        view = user.record(job_id) or {}
        delivery = view.get("webhook") or {}
        if delivery.get("state") == "failed":
            MIX.webhook_refused[job_id] = str(delivery.get("last_error") or delivery.get("last_status"))
            return LF.JobFailed(f"the stack gave up the delivery: {MIX.webhook_refused[job_id]}")
    return LF.JobFailed(f"no webhook delivery within {MIX.options.webhook_timeout:.0f} s of the job's end")


# ---- a streamed /v1/images/generations -----------------------------------------------------

def run_stream(user, job) -> None:
    """POST /v1/images/generations with stream and partial_images, read as SSE to its last event."""
    tally, token = MIX.tallies["stream"], f"images-{uuid.uuid4().hex}"
    started = time.monotonic()
    body = {"prompt": job.prompt, "model": f"hadis-{max(1, math.ceil(LF.REPLAY.slo_s))}s", "user": "locust",
            "stream": True, "partial_images": PARTIAL_IMAGES}
    MIX.in_flight[token] = "stream"
    LF.REPLAY.in_flight[token] = started
    try:
        with gevent.Timeout(LF.REPLAY.job_timeout_s, False), user.client.post(
                "/v1/images/generations", json=body, headers=user.auth, stream=True,
                catch_response=True) as response:
            response.request_meta.update(request_type="feature", name="stream")
            if response.status_code != 200:  # refused: a row of the route's, as POST /v1/jobs's refusals
                response.request_meta.update(request_type="POST", name="/v1/images/generations")
                tally.not_accepted += 1
                LF.REPLAY.tally.publish_errors += 1
                response.failure(LF.api_error(response))
                return
            tally.submitted += 1
            LF.REPLAY.tally.submitted += 1
            outcome = read_stream(user, response, started)
            response.request_meta["response_time"] = (time.monotonic() - started) * 1000.0
            if outcome is None:
                response.success()
            else:
                response.failure(outcome)
            return
        tally.lost += 1  # the timeout: no last event within the job timeout
        LF.REPLAY.tally.lost += 1
        LF.report(user.environment, "stream", time.monotonic() - started,
                  LF.JobLost("no last event within the job timeout"), request_type="feature")
    finally:
        MIX.in_flight.pop(token, None)
        LF.REPLAY.in_flight.pop(token, None)


def read_stream(user, response, started: float) -> Exception | None:
    """Count the stream's events; the error of its row, or None when the completed event carried
    an image (then done)."""
    tally, partials = MIX.tallies["stream"], 0
    try:
        for event, data in LF.sse_events(as_they_come(response)):
            if event == "image_generation.partial_image":
                if partials == 0:
                    MIX.first_partial_s.append(time.monotonic() - started)
                    LF.report(user.environment, "stream first partial", time.monotonic() - started, None,
                              request_type="feature")
                partials += 1
                MIX.partial_events += 1
            elif event == "image_generation.completed":
                MIX.completed_events += 1
                return completed(tally, data, partials, time.monotonic() - started)
            elif event == "error":
                return stream_error(tally, data)
    except (OSError, ValueError) as error:
        tally.bad += 1
        return LF.JobFailed(f"the stream broke: {error!r}")
    tally.bad += 1
    return LF.JobFailed("the stream ended without a completed or error event")


def as_they_come(response, block: int = 16384):
    """The body's bytes as they arrive. FastResponse.iter_content(n) reads until it has n bytes,
    so an event smaller than n waits for the next one: a preview would be timed at the image's
    arrival. This takes whatever geventhttpclient has parsed (its private buffer: if that is ever
    not there, iter_content of 1 byte a read, correct but slow)."""
    raw = getattr(response, "_response", None)
    if raw is None or not hasattr(raw, "_body_buffer") or not hasattr(raw, "feed"):
        yield from response.iter_content(1, decode_content=False)
        return
    while True:
        if raw._body_buffer:
            data = bytes(raw._body_buffer)
            del raw._body_buffer[:]
            yield data
        elif raw.message_complete or raw._sock is None:
            return
        else:
            data = raw._sock.recv(block)
            raw.feed(data)
            if not data:
                return


def completed(tally: FeatureTally, data: dict, partials: int, latency_s: float) -> Exception | None:
    try:
        image = base64.b64decode(data["b64_json"], validate=True)
    except (KeyError, TypeError, binascii.Error):
        image = b""
    if image_format(image) != (data.get("output_format") or "png"):
        tally.bad += 1
        return LF.JobFailed("the completed event carries no image of its format")
    tally.done += 1
    LF.count_done("stream", latency_s)
    if partials < PARTIAL_IMAGES:
        MIX.short_streams += 1
    return None


def stream_error(tally: FeatureTally, data: dict) -> Exception:
    """OpenAI's error event: a 408 (not ready in time, or the deadline passed) is expired, the rest failed."""
    error = data.get("error") or {}
    message = f"{error.get('code')}: {error.get('message')}"
    if error.get("type") == "timeout" or "expired" in str(error.get("code")):
        tally.expired += 1
        LF.REPLAY.tally.expired += 1
    else:
        tally.failed += 1
        LF.REPLAY.tally.failed += 1
    return LF.JobFailed(message)
