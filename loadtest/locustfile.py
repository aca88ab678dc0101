"""Locust load test of a running hadis stack, through its public contracts only, in one of two ways:

* `JobUser` (the default, `--via amqp`) as another backend would (docs/jobs.md): jobs are
  published to `<ns>.requests` over AMQP and their results read from Redis;
* `HttpJobUser` (`--via http`, `--http`, or `HADIS_LOADTEST_VIA=http`) as a client of the HTTP
  api (services/api/) with a key: `POST /v1/jobs`, then the job's event stream until its
  terminal state; or, with `--http-route images`, `POST /v1/images/generations`, which answers
  with the image, as OpenAI's clients do; or, with `--http-route mixed`, each arrival one of the
  api's features (formats, webhooks, cancels, quality, streamed previews), each checked end to end
  (loadtest/mixed.py).

    locust -f loadtest/locustfile.py --headless --trace loadtest/traces/maf-peak-60s.csv \\
        --csv out/loadtest/locust --html out/loadtest/report.html [--http]

`TraceShape` replays a trace file (`arrival_ms,prompt_id` lines; prompt i is line i of
profiles/reference/prompts.txt): each arrival is submitted at its time by one of enough users
(open loop), and the test ends when every job has finished or timed out. Each job is reported to
Locust as one request: type "job", name its path (light, heavy, escalated; `images` for the
images route, whose answer does not say), response time its submit-to-done latency as this client
saw it, so Locust's percentiles, CSV and HTML hold the latency distribution, the same rows for
both users. Failed and expired jobs are Locust failures, and so are lost ones (not terminal within
--job-timeout). The HTTP user's own calls are Locust rows too (type GET/POST, the route as name):
`POST /v1/jobs` is the HTTP hop's cost. The summary adds the SLO outcome; the exit code is
non-zero when any job failed, expired or was lost, or when none was submitted.

Blocking clients (pika, redis-py, geventhttpclient), as Locust runs on gevent. Defaults come from
the HADIS_* settings, so it targets `make run`'s stack (namespace `hadis`, api on
127.0.0.1:8080) unless told otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gevent
import orjson
from locust import FastHttpUser, LoadTestShape, User, events, task
from locust.env import Environment
from pika.exceptions import AMQPError, NackError, UnroutableError

from loadtest import mixed, mixed_report
from loadtest.common import (
    TERMINAL,
    Arrival,
    JobFailed,
    JobLost,
    Stack,
    Tally,
    api_error,
    auth_headers,
    check_stack,
    http_get,
    json_or_none,
    png_size,
    read_trace,
    settle_in_flight,
    sse_events,
    users_needed,
)
from shared.schemas import Job
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = ROOT / "loadtest" / "traces" / "maf-peak-60s.csv"
DEFAULT_PROMPTS = ROOT / "profiles" / "reference" / "prompts.txt"
LAG_TOLERANCE_S = 1.0  # an arrival published later than this behind its trace time counts as lagging
IDLE_POLL_S = 0.2
DEFAULT_API_URL = "http://127.0.0.1:8080"
VIAS = ("amqp", "http")
# Answers of the api that mean the job was not accepted (auth, rate limit, quota, ingress full):
# the HTTP user's counterpart of a failed publish.
NOT_ACCEPTED = (401, 403, 429, 503)

log = logging.getLogger("hadis.loadtest")


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    settings = Settings()
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="arrival_ms,prompt_id lines to replay")
    parser.add_argument("--trace-speed", type=float, default=1.0, help="2 replays the trace twice as fast")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="prompt i is line i")
    parser.add_argument("--amqp-url", default=settings.amqp_url.get_secret_value(), is_secret=True)
    parser.add_argument("--redis-url", default=settings.redis_url.get_secret_value(), is_secret=True)
    parser.add_argument("--namespace", default=settings.namespace, help="prefix of the stack's queues and keys")
    parser.add_argument("--slo", type=float, default=settings.slo_s, help="each job's slo_s, seconds")
    parser.add_argument("--job-timeout", type=float, default=None,
                       help="seconds after which a job not terminal counts as lost (default: 2 x slo + 30)")
    parser.add_argument("--max-users", type=int, default=200, help="most concurrent jobs in flight")
    parser.add_argument("--summary", default="", help="also write the summary here as JSON")
    parser.add_argument("--via", default=os.environ.get("HADIS_LOADTEST_VIA", "amqp"), choices=VIAS,
                        help="amqp: publish to the ingress queue and read Redis; http: through the api "
                             "(default HADIS_LOADTEST_VIA, else amqp)")
    # After --via: the first action of a dest gives its default.
    parser.add_argument("--http", dest="via", action="store_const", const="http", include_in_web_ui=False,
                        help="same as --via http")
    parser.add_argument("--http-route", default="jobs", choices=("jobs", "images", "mixed"),
                        help="jobs: POST /v1/jobs, then the job's events; images: POST /v1/images/generations; "
                             "mixed: the api's features, drawn by --mix (loadtest/mixed.py; implies --via http)")
    parser.add_argument("--api-url", default=os.environ.get("HADIS_API_URL", DEFAULT_API_URL),
                        help="the api's base URL (HADIS_API_URL); --host overrides it")
    parser.add_argument("--api-key", default=os.environ.get("HADIS_API_KEY", ""), is_secret=True,
                        help="a key of the api (HADIS_API_KEY): hadis api-key create --tenant NAME")
    mixed.add_arguments(parser)


# ---- the trace and its progress -----------------------------------------------------------

class Replay:
    """The trace being replayed: hands out arrivals in order, tracks jobs in flight."""

    def __init__(self, arrivals: list[Arrival], prompts: list[str], options, via: str = "amqp") -> None:
        self.arrivals = arrivals
        self.prompts = prompts
        self.options = options
        self.via = via  # amqp (JobUser) or http (HttpJobUser)
        self.slo_s = options.slo
        self.job_timeout_s = options.job_timeout or 2 * options.slo + 30
        self.users = users_needed(arrivals, min(self.slo_s, self.job_timeout_s), options.max_users)
        self.next_index = 0
        self.outstanding = 0  # arrivals taken and not yet settled (waiting for their time, or in flight)
        self.in_flight: dict[str, float] = {}
        self.tally = Tally()
        self.started_at: float | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()

    def take(self) -> Arrival | None:
        if self.next_index >= len(self.arrivals):
            return None
        arrival = self.arrivals[self.next_index]
        self.next_index += 1
        self.outstanding += 1
        return arrival

    def due_in(self, arrival: Arrival) -> float:
        return self.started_at + arrival.at_s - time.monotonic()

    def note_lag(self, lag_s: float) -> None:
        self.tally.max_lag_s = max(self.tally.max_lag_s, lag_s)
        if lag_s > LAG_TOLERANCE_S:
            self.tally.lagging_arrivals += 1

    @property
    def finished(self) -> bool:
        return self.next_index >= len(self.arrivals) and self.outstanding == 0

    def job(self, arrival: Arrival) -> Job:
        prompt = self.prompts[arrival.prompt_id % len(self.prompts)]
        return Job(prompt=prompt, slo_s=self.slo_s,
                   metadata={"source": "locust", "prompt_id": arrival.prompt_id, "arrival": arrival.index})


REPLAY: Replay | None = None


@events.init.add_listener
def load_trace(environment: Environment, **kwargs) -> None:
    global REPLAY
    options = environment.parsed_options
    if options is None:
        return
    logging.getLogger("pika").setLevel(logging.WARNING)
    arrivals = read_trace(Path(options.trace), options.trace_speed)
    prompts = Path(options.prompts).read_text(encoding="utf-8").splitlines()
    REPLAY = Replay(arrivals, prompts, options, via_of(options))
    if REPLAY.via == "http":
        target = check_api(environment, options)
        if options.http_route == "mixed":
            target += "; " + mixed.setup(environment, options, len(arrivals))
    else:
        check_stack(options)
        target = f"namespace {options.namespace}"
    log.info("trace %s: %d arrivals over %.1f s, %d users, job timeout %.0f s, via %s, %s",
             options.trace, len(arrivals), arrivals[-1].at_s, REPLAY.users, REPLAY.job_timeout_s, REPLAY.via, target)


def via_of(options) -> str:
    """amqp or http: from a user class named on the command line (`locust -f ... HttpJobUser`),
    else --via / --http / HADIS_LOADTEST_VIA."""
    named = list(getattr(options, "user_classes", None) or [])
    if named:
        if len(named) != 1 or named[0] not in VIA_OF_CLASS:
            raise SystemExit(f"name one user class of {sorted(VIA_OF_CLASS)}, or none and --via amqp|http")
        return VIA_OF_CLASS[named[0]]
    if options.http_route == "mixed":
        return "http"
    if options.via not in VIAS:
        raise SystemExit(f"--via / HADIS_LOADTEST_VIA must be one of {VIAS}, not {options.via!r}")
    return options.via


def check_api(environment: Environment, options) -> str:
    """Point the HTTP user at the api, and refuse to start unless it is healthy and takes the key
    (a wrong key would only measure 401s). The api's /healthz does not say whether a router
    consumes its queue: a stack without one shows as lost jobs."""
    url = (environment.host or options.api_url).rstrip("/")
    HttpJobUser.host = url
    # One read can last a whole job: the images route answers when the image is done.
    HttpJobUser.network_timeout = REPLAY.job_timeout_s + 30.0
    if not options.api_key:
        raise SystemExit("--via http needs an api key: HADIS_API_KEY or --api-key "
                         "(hadis api-key create --tenant NAME --rate R --burst B --max-active N)")
    try:
        health = http_get(f"{url}/healthz")
        models = http_get(f"{url}/v1/models", auth_headers(options.api_key))
    except OSError as error:
        raise SystemExit(f"hadis api not reachable at {url}: {error!r}. Is it running (make run)?") from None
    if health[0] != 200:
        raise SystemExit(f"the api at {url} is not healthy ({health[0]}): {health[1][:300]!r}")
    if models[0] != 200:
        raise SystemExit(f"the api at {url} refused the key ({models[0]}): {models[1][:300]!r}")
    return f"api {url}"


@events.test_start.add_listener
def start_clock(environment: Environment, **kwargs) -> None:
    REPLAY.start()


# ---- what both users do with a job ---------------------------------------------------------

def replay_next(submit: Callable[[Job], None]) -> None:
    """Take the trace's next arrival, wait for its time, and submit it (the user sees it through)."""
    arrival = REPLAY.take()
    if arrival is None:
        gevent.sleep(IDLE_POLL_S)
        return
    try:
        gevent.sleep(max(REPLAY.due_in(arrival), 0.0))
        REPLAY.note_lag(-REPLAY.due_in(arrival))
        submit(REPLAY.job(arrival))
    finally:
        REPLAY.outstanding -= 1


def path_of(record: dict) -> str:
    """The path a job took, from its record: Redis's hash (strings) or the api's JSON."""
    if record.get("escalated") in ("1", True):
        return "escalated"
    return record.get("tier") or "none"


def settle(environment: Environment, record: dict | None, latency_s: float, image_size: Callable[[], int]) -> None:
    """Count a submitted job by its record and report it as one `job` row, the same for both users:
    lost when not terminal, a failure under its path when not done or done without an image."""
    if record is None or record.get("state") not in TERMINAL:
        REPLAY.tally.lost += 1
        report(environment, "lost", latency_s, JobLost(f"not terminal within {REPLAY.job_timeout_s:.0f} s"))
        return
    path = path_of(record)
    if record["state"] != "done":
        REPLAY.tally.count_unserved(record["state"])
        report(environment, path, latency_s, JobFailed(f"{record['state']}: {record.get('error') or ''}"))
        return
    size = image_size()
    if not size:
        REPLAY.tally.failed += 1
        report(environment, path, latency_s, JobFailed("done, but no image in the store"))
        return
    count_done(path, latency_s)
    report(environment, path, latency_s, None, length=size)


def count_done(path: str, latency_s: float) -> None:
    REPLAY.tally.done += 1
    REPLAY.tally.by_path[path] = REPLAY.tally.by_path.get(path, 0) + 1
    if latency_s > REPLAY.slo_s:
        REPLAY.tally.late += 1


def report(environment: Environment, name: str, latency_s: float, error: Exception | None, length: int = 0,
           request_type: str = "job") -> None:
    environment.events.request.fire(request_type=request_type, name=name, response_time=latency_s * 1000.0,
                                    response_length=length, exception=error, context={})


# ---- over AMQP and Redis -------------------------------------------------------------------

class JobUser(User):
    """Publishes the trace's next arrival at its time, waits for the job, reports its latency."""

    def on_start(self) -> None:
        self.stack = Stack(self.environment.parsed_options)

    def on_stop(self) -> None:
        self.stack.close()

    @task
    def replay_next_arrival(self) -> None:
        replay_next(self.submit_and_wait)

    def submit_and_wait(self, job: Job) -> None:
        started = time.monotonic()
        try:
            self.stack.publish(job)
        except (UnroutableError, NackError, AMQPError) as error:
            REPLAY.tally.publish_errors += 1
            report(self.environment, "publish", time.monotonic() - started, error)
            return
        REPLAY.tally.submitted += 1
        # Left in flight if this user is stopped while it waits: the summary settles it.
        REPLAY.in_flight[job.job_id] = started
        record = self.stack.wait(job.job_id, REPLAY.job_timeout_s)
        latency_s = time.monotonic() - started
        del REPLAY.in_flight[job.job_id]
        settle(self.environment, record, latency_s, lambda: self.stack.image_size(job.job_id))


# ---- through the HTTP api ------------------------------------------------------------------

class HttpJobUser(FastHttpUser):
    """Submits the trace's next arrival through the HTTP api at its time, follows the job to its
    end and reports it as JobUser does; the api calls it makes are Locust rows of their own."""

    host = DEFAULT_API_URL  # --api-url or --host, at init
    connection_timeout = 10.0
    network_timeout = 180.0  # per read; raised at init above the job timeout

    def on_start(self) -> None:
        self.auth = auth_headers(self.environment.parsed_options.api_key)

    @task
    def replay_next_arrival(self) -> None:
        route = REPLAY.options.http_route
        if route == "mixed":
            replay_next(lambda job: mixed.run(self, job))
        else:
            replay_next(self.generate if route == "images" else self.submit_and_follow)

    # --http-route jobs: POST /v1/jobs, then the job's events (what a client that polls less does).
    def submit_and_follow(self, job: Job) -> None:
        started = time.monotonic()
        job_id = self.submit(job)
        if job_id is None:
            REPLAY.tally.publish_errors += 1
            return
        REPLAY.tally.submitted += 1
        REPLAY.in_flight[job_id] = started
        ended_at = self.follow(job_id, started + REPLAY.job_timeout_s)
        record = self.record(job_id) if ended_at is not None else None
        del REPLAY.in_flight[job_id]
        latency_s = (ended_at or time.monotonic()) - started
        settle(self.environment, record, latency_s, lambda: self.image_size(job_id))

    def submit(self, job: Job) -> str | None:
        """POST /v1/jobs: the job's id once the api answered 202 (the broker has it), else None."""
        body = job.model_dump(mode="json", include={"prompt", "slo_s", "metadata"})
        with self.client.post("/v1/jobs", json=body, headers=self.auth, catch_response=True) as response:
            if response.status_code == 202:
                return response.json()["id"]
            response.failure(api_error(response))
            return None

    def follow(self, job_id: str, give_up_at: float) -> float | None:
        """When the job reached a terminal state (time.monotonic()), from its event stream; if the
        stream ends without one (refused, broken, the api's own time limit), the record is read
        and the stream opened again. None when give_up_at passes first."""
        while (remaining := give_up_at - time.monotonic()) > 0:
            ended_at = self.watch(job_id, remaining)
            if ended_at is not None:
                return ended_at
            record = self.record(job_id)
            if record is not None and record["state"] in TERMINAL:
                return time.monotonic()
            gevent.sleep(min(1.0, max(give_up_at - time.monotonic(), 0.0)))
        return None

    def watch(self, job_id: str, timeout_s: float) -> float | None:
        """Read GET /v1/jobs/{id}/events to its end (the api ends it at the terminal state); when
        the terminal event arrived, or None."""
        ended_at = None
        with gevent.Timeout(timeout_s, False), self.client.get(
                f"/v1/jobs/{job_id}/events", name="/v1/jobs/{id}/events", headers=self.auth, stream=True,
                catch_response=True) as response:
            if response.status_code != 200:
                response.failure(api_error(response))
                return None
            try:
                for event, data in sse_events(response.iter_content(256, decode_content=False)):
                    if event == "state" and data.get("state") in TERMINAL:
                        ended_at = time.monotonic()
            except (OSError, ValueError) as error:  # a broken stream, or a garbled event
                response.failure(f"event stream broke: {error!r}")
        return ended_at

    def record(self, job_id: str) -> dict | None:
        with self.client.get(f"/v1/jobs/{job_id}", name="/v1/jobs/{id}", headers=self.auth,
                             catch_response=True) as response:
            if response.status_code == 200:
                return response.json()
            response.failure(api_error(response))
            return None

    def image_size(self, job_id: str) -> int:
        with self.client.get(f"/v1/jobs/{job_id}/image", name="/v1/jobs/{id}/image", headers=self.auth,
                             catch_response=True) as response:
            if response.status_code == 200:
                return len(response.content or b"")
            response.failure(api_error(response))
            return 0

    # --http-route images: one call that answers with the image (what OpenAI's clients do).
    def generate(self, job: Job) -> None:
        """POST /v1/images/generations, reported as the job row `images` (its answer does not say
        the path). No job id comes back, so it is in flight under a token of its own."""
        started, token = time.monotonic(), f"images-{uuid.uuid4().hex}"
        REPLAY.tally.submitted += 1
        REPLAY.in_flight[token] = started
        body = {"prompt": job.prompt, "model": f"hadis-{max(1, math.ceil(REPLAY.slo_s))}s", "user": "locust"}
        try:
            with self.client.post("/v1/images/generations", json=body, headers=self.auth,
                                  catch_response=True) as response:
                response.request_meta.update(request_type="job", name="images")
                self.settle_images(response, time.monotonic() - started)
        finally:
            REPLAY.in_flight.pop(token, None)

    def settle_images(self, response, latency_s: float) -> None:
        """200 with an image: done; refused before it was queued (401, 429, 503): a publish error,
        as JobUser's; 408 (the deadline passed, or the api stopped waiting): expired; else failed."""
        size = png_size(json_or_none(response)) if response.status_code == 200 else 0
        if size:
            count_done("images", latency_s)
            response.request_meta["response_length"] = size
            response.success()
            return
        if response.status_code in NOT_ACCEPTED:
            REPLAY.tally.submitted -= 1
            REPLAY.tally.publish_errors += 1
            response.request_meta["name"] = "publish"
        elif response.status_code == 408:
            REPLAY.tally.expired += 1
        else:
            REPLAY.tally.failed += 1
        response.failure(JobFailed(api_error(response) if response.status_code != 200 else "200 without an image"))


mixed.bind(sys.modules[__name__])
VIA_OF_CLASS = {JobUser.__name__: "amqp", HttpJobUser.__name__: "http"}
USER_CLASS_OF_VIA = {"amqp": JobUser, "http": HttpJobUser}


class TraceShape(LoadTestShape):
    """Enough users of the chosen class for the trace's busiest SLO window, all at once; stops
    when the trace is replayed and every job has finished or timed out, or at --run-time (Locust
    itself starts that clock only once a shape has ended, so the shape keeps it)."""

    use_common_options = True

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        if REPLAY.started_at is not None and REPLAY.finished:
            return None
        run_time_s = getattr(REPLAY.options, "run_time", None)
        if run_time_s and self.get_run_time() >= run_time_s:
            log.warning("--run-time of %s s reached before the trace was replayed and settled", run_time_s)
            return None
        return (REPLAY.users, REPLAY.users, [USER_CLASS_OF_VIA[REPLAY.via]])


@events.quitting.add_listener
def summarise(environment: Environment, **kwargs) -> None:
    if REPLAY is None or REPLAY.started_at is None:
        return
    found = mixed_report.summary(environment) if REPLAY.options.http_route == "mixed" and mixed.MIX else None
    settle_in_flight(REPLAY, HttpJobUser.host)
    summary = {**REPLAY.tally.summary(), "slo_s": REPLAY.slo_s, "trace": REPLAY.options.trace,
               "arrivals": len(REPLAY.arrivals), "replayed": REPLAY.next_index, "users": REPLAY.users,
               "via": REPLAY.via, "namespace": REPLAY.options.namespace}
    if REPLAY.via == "http":
        summary.update(api_url=HttpJobUser.host, http_route=REPLAY.options.http_route)
    if found is not None:
        summary["mixed"] = found
    log.info("hadis summary: %s", orjson.dumps(summary).decode())
    if REPLAY.options.summary:
        Path(REPLAY.options.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(REPLAY.options.summary).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if REPLAY.tally.lagging_arrivals:
        log.warning("%d arrivals were published more than %.0f s late: raise --max-users",
                    REPLAY.tally.lagging_arrivals, LAG_TOLERANCE_S)
    tally = REPLAY.tally
    if tally.submitted == 0 or tally.failed or tally.expired or tally.lost or tally.publish_errors:
        environment.process_exit_code = 1
    if found is not None:  # the mixed scenario's rule alone (loadtest/mixed.py), not Locust's any-failure one
        if found["violations"]:
            log.warning("mixed scenario: %s", found["violations"])
        failed = tally.submitted == 0 or tally.failed or tally.expired or tally.lost or found["violations"]
        environment.process_exit_code = 1 if failed else 0
