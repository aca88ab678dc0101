"""Locust load test of a running hadis stack, through the public contract only (docs/jobs.md):
jobs are published to `<ns>.requests` over AMQP and their results read from Redis, as any other
backend would.

    locust -f loadtest/locustfile.py --headless --trace loadtest/traces/maf-peak-60s.csv \\
        --csv out/loadtest/locust --html out/loadtest/report.html

`TraceShape` replays a trace file (`arrival_ms,prompt_id` lines; prompt i is line i of
profiles/reference/prompts.txt): each arrival is published at its time by one of enough users
(open loop), and the test ends when every job has finished or timed out. Each job is reported to
Locust as one request: type "job", name its path (light, heavy, escalated), response time its
submit-to-done latency as this client saw it, so Locust's percentiles, CSV and HTML hold the
latency distribution. Failed and expired jobs are Locust failures, and so are lost ones (not
terminal within --job-timeout). The summary adds the SLO outcome; the exit code is non-zero when
any job failed, expired or was lost, or when none was submitted.

Blocking clients (pika, redis-py), as Locust runs on gevent. Defaults come from the HADIS_*
settings, so it targets `make run`'s stack (namespace `hadis`) unless told otherwise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import orjson
import pika
import redis
from locust import LoadTestShape, User, events, task
from locust.env import Environment
from pika.exceptions import AMQPError, NackError, UnroutableError

from shared.schemas import Job
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = ROOT / "loadtest" / "traces" / "maf-peak-60s.csv"
DEFAULT_PROMPTS = ROOT / "profiles" / "reference" / "prompts.txt"
TERMINAL = ("done", "failed", "expired")
LAG_TOLERANCE_S = 1.0  # an arrival published later than this behind its trace time counts as lagging
IDLE_POLL_S = 0.2

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


# ---- the trace and its progress -----------------------------------------------------------

@dataclass(frozen=True)
class Arrival:
    at_s: float
    prompt_id: int


def read_trace(path: Path, speed: float) -> list[Arrival]:
    arrivals = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            at_ms, prompt_id = line.split(",")
            arrivals.append(Arrival(float(at_ms) / 1000.0 / speed, int(prompt_id)))
        except ValueError:
            raise ValueError(f"{path}:{number}: expected arrival_ms,prompt_id, got {line!r}") from None
    if not arrivals:
        raise ValueError(f"{path}: no arrivals")
    return sorted(arrivals, key=lambda arrival: arrival.at_s)


def users_needed(arrivals: list[Arrival], window_s: float, cap: int) -> int:
    """The most arrivals in any window_s: enough users to keep that many jobs in flight."""
    most, start = 0, 0
    for end, arrival in enumerate(arrivals):
        while arrival.at_s - arrivals[start].at_s > window_s:
            start += 1
        most = max(most, end - start + 1)
    return max(1, min(most, cap))


@dataclass
class Tally:
    submitted: int = 0
    done: int = 0
    failed: int = 0
    expired: int = 0
    lost: int = 0
    late: int = 0  # done, after its SLO
    publish_errors: int = 0
    lagging_arrivals: int = 0
    max_lag_s: float = 0.0
    by_path: dict[str, int] = field(default_factory=dict)

    def count_unserved(self, state: str) -> None:
        if state == "expired":
            self.expired += 1
        else:
            self.failed += 1

    @property
    def slo_violations(self) -> int:
        return self.late + self.failed + self.expired + self.lost

    def summary(self) -> dict:
        ratio = self.slo_violations / self.submitted if self.submitted else None
        return {"submitted": self.submitted, "done": self.done, "failed": self.failed, "expired": self.expired,
                "lost": self.lost, "late": self.late, "slo_violations": self.slo_violations,
                "slo_violation_ratio": ratio, "publish_errors": self.publish_errors, "by_path": self.by_path,
                "lagging_arrivals": self.lagging_arrivals, "max_lag_s": round(self.max_lag_s, 3)}


class Replay:
    """The trace being replayed: hands out arrivals in order, tracks jobs in flight."""

    def __init__(self, arrivals: list[Arrival], prompts: list[str], options) -> None:
        self.arrivals = arrivals
        self.prompts = prompts
        self.options = options
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
        return Job(prompt=prompt, slo_s=self.slo_s, metadata={"source": "locust", "prompt_id": arrival.prompt_id})


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
    REPLAY = Replay(arrivals, prompts, options)
    check_stack(options)
    log.info("trace %s: %d arrivals over %.1f s, %d users, job timeout %.0f s, namespace %s",
             options.trace, len(arrivals), arrivals[-1].at_s, REPLAY.users, REPLAY.job_timeout_s, options.namespace)


def check_stack(options) -> None:
    """Refuse to start unless a router consumes the ingress queue: a load test against nothing
    would only measure timeouts."""
    queue = f"{options.namespace}.requests"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
        try:
            consumers = connection.channel().queue_declare(queue, passive=True).method.consumer_count
        finally:
            connection.close()
        redis.Redis.from_url(options.redis_url, socket_timeout=5).ping()
    except (AMQPError, redis.RedisError, OSError) as error:
        raise SystemExit(f"hadis stack not reachable (queue {queue}): {error!r}. Is it running (make run)?") from None
    if consumers < 1:
        raise SystemExit(f"no router consumes {queue}: start the stack (make run) or pass its --namespace")


@events.test_start.add_listener
def start_clock(environment: Environment, **kwargs) -> None:
    REPLAY.start()


# ---- talking to the stack -----------------------------------------------------------------

class JobFailed(Exception):
    pass


class JobLost(Exception):
    pass


class Stack:
    """One user's connections: a confirmed AMQP channel and a Redis client."""

    def __init__(self, options) -> None:
        self.namespace = options.namespace
        self.connection = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.redis = redis.Redis.from_url(options.redis_url, socket_timeout=10, health_check_interval=15)

    def close(self) -> None:
        try:
            self.connection.close()
        except AMQPError:
            pass
        self.redis.close()

    def publish(self, job: Job) -> None:
        """Persistent, mandatory, confirmed: raises UnroutableError (no such queue: no stack in this
        namespace) or NackError (the queue is full)."""
        self.channel.basic_publish(
            exchange="",
            routing_key=f"{self.namespace}.requests",
            body=job.model_dump_json().encode(),
            properties=pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                            message_id=job.job_id),
            mandatory=True,
        )

    def record(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(f"{self.namespace}:job:{job_id}")
        return {key.decode(): value.decode() for key, value in raw.items()}

    def image_size(self, job_id: str) -> int:
        return int(self.redis.strlen(f"{self.namespace}:image:{job_id}"))

    def wait(self, job_id: str, timeout_s: float) -> dict[str, str] | None:
        """Subscribe to the job's done channel, then read the record (so a completion between the
        two is not missed); wait for the message in bounded steps, re-reading the record."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{self.namespace}:done:{job_id}")
        try:
            give_up_at = time.monotonic() + timeout_s
            while True:
                record = self.record(job_id)
                if record.get("state") in TERMINAL:
                    return record
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    return None
                pubsub.get_message(timeout=min(remaining, 5.0))
        finally:
            pubsub.close()


def path_of(record: dict[str, str]) -> str:
    if record.get("escalated") == "1":
        return "escalated"
    return record.get("tier") or "none"


class JobUser(User):
    """Publishes the trace's next arrival at its time, waits for the job, reports its latency."""

    def on_start(self) -> None:
        self.stack = Stack(self.environment.parsed_options)

    def on_stop(self) -> None:
        self.stack.close()

    @task
    def replay_next_arrival(self) -> None:
        arrival = REPLAY.take()
        if arrival is None:
            gevent.sleep(IDLE_POLL_S)
            return
        try:
            gevent.sleep(max(REPLAY.due_in(arrival), 0.0))
            REPLAY.note_lag(-REPLAY.due_in(arrival))
            self.submit_and_wait(REPLAY.job(arrival))
        finally:
            REPLAY.outstanding -= 1

    def submit_and_wait(self, job: Job) -> None:
        started = time.monotonic()
        try:
            self.stack.publish(job)
        except (UnroutableError, NackError, AMQPError) as error:
            REPLAY.tally.publish_errors += 1
            self.report("publish", started, error)
            return
        REPLAY.tally.submitted += 1
        # Left in flight if this user is stopped while it waits: the summary settles it.
        REPLAY.in_flight[job.job_id] = started
        record = self.stack.wait(job.job_id, REPLAY.job_timeout_s)
        del REPLAY.in_flight[job.job_id]
        if record is None:
            REPLAY.tally.lost += 1
            self.report("lost", started, JobLost(f"not terminal within {REPLAY.job_timeout_s:.0f} s"))
        elif record["state"] != "done":
            REPLAY.tally.count_unserved(record["state"])
            self.report(path_of(record), started, JobFailed(f"{record['state']}: {record.get('error', '')}"))
        else:
            self.finish(job, record, started)

    def finish(self, job: Job, record: dict[str, str], started: float) -> None:
        latency_s = time.monotonic() - started
        image_bytes = self.stack.image_size(job.job_id)
        if not image_bytes:
            REPLAY.tally.failed += 1
            self.report(path_of(record), started, JobFailed("done, but no image in the store"))
            return
        path = path_of(record)
        REPLAY.tally.done += 1
        REPLAY.tally.by_path[path] = REPLAY.tally.by_path.get(path, 0) + 1
        if latency_s > REPLAY.slo_s:
            REPLAY.tally.late += 1
        self.report(path, started, None, length=image_bytes)

    def report(self, name: str, started: float, error: Exception | None, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="job", name=name, response_time=(time.monotonic() - started) * 1000.0,
            response_length=length, exception=error, context={},
        )


class TraceShape(LoadTestShape):
    """Enough users for the trace's busiest SLO window, all at once; stops when the trace is
    replayed and every job has finished or timed out. --run-time still bounds the whole test."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        if REPLAY.started_at is not None and REPLAY.finished:
            return None
        return (REPLAY.users, REPLAY.users)


@events.quitting.add_listener
def summarise(environment: Environment, **kwargs) -> None:
    if REPLAY is None or REPLAY.started_at is None:
        return
    settle_in_flight(REPLAY)
    summary = {**REPLAY.tally.summary(), "slo_s": REPLAY.slo_s, "trace": REPLAY.options.trace,
               "arrivals": len(REPLAY.arrivals), "replayed": REPLAY.next_index, "users": REPLAY.users,
               "namespace": REPLAY.options.namespace}
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


def settle_in_flight(replay: Replay) -> None:
    """Jobs still awaited when the run was cut short (--run-time, Ctrl-C): count them by their
    record now; one that is not terminal is lost."""
    if not replay.in_flight:
        return
    client = redis.Redis.from_url(replay.options.redis_url, socket_timeout=5)
    for job_id in list(replay.in_flight):
        state = client.hget(f"{replay.options.namespace}:job:{job_id}", "state")
        state = state.decode() if state else None
        if state == "done":
            replay.tally.done += 1
        elif state in TERMINAL:
            replay.tally.count_unserved(state)
        else:
            replay.tally.lost += 1
        del replay.in_flight[job_id]
    client.close()
