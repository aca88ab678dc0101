"""What the load test's users and checks share that does not depend on the run in progress (the
locustfile's Replay): the trace's arrivals and the tally of outcomes, the AMQP user's connections,
the HTTP user's parsing of the api's answers and event streams, and the checks' plain GETs. Split
from loadtest/locustfile.py (which imports these names, as loadtest/mixed.py reads them there)."""

from __future__ import annotations

import base64
import binascii
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pika
import redis
from pika.exceptions import AMQPError

from shared.experiments.trace import load_trace as parse_trace
from shared.schemas import Job

TERMINAL = ("done", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class Arrival:
    at_s: float
    prompt_id: int
    index: int = 0  # its line in the trace, from 0 (the mixed scenario draws its kind by it)


def read_trace(path: Path, speed: float) -> list[Arrival]:
    """The trace's arrivals in order, `speed` times sooner. The one parser of trace files is
    shared/experiments/trace.py's (the experiments and the simulator read the same files)."""
    trace = parse_trace(path).compressed(speed)
    return [Arrival(float(at_s), int(prompt_id), index)
            for index, (at_s, prompt_id) in enumerate(zip(trace.arrival_s, trace.prompt_ids, strict=True))]


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
    cancelled: int = 0  # cancelled by its client (the mixed scenario's cancel jobs): neither served nor failed
    refused: int = 0  # quality=high refused or shed as documented (the mixed scenario)
    lost: int = 0
    late: int = 0  # done, after its SLO
    publish_errors: int = 0
    lagging_arrivals: int = 0
    max_lag_s: float = 0.0
    by_path: dict[str, int] = field(default_factory=dict)

    def count_unserved(self, state: str) -> None:
        if state == "expired":
            self.expired += 1
        elif state == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    @property
    def slo_violations(self) -> int:
        return self.late + self.failed + self.expired + self.lost

    def summary(self) -> dict:
        ratio = self.slo_violations / self.submitted if self.submitted else None
        return {"submitted": self.submitted, "done": self.done, "failed": self.failed, "expired": self.expired,
                "cancelled": self.cancelled, "refused": self.refused, "lost": self.lost, "late": self.late,
                "slo_violations": self.slo_violations,
                "slo_violation_ratio": ratio, "publish_errors": self.publish_errors, "by_path": self.by_path,
                "lagging_arrivals": self.lagging_arrivals, "max_lag_s": round(self.max_lag_s, 3)}


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


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def http_get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET outside the users (checks, the final count): the standard library,
    which gevent has patched, so that nothing imports urllib3 before Locust patches ssl."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


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


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str, dict]]:
    """(event, data) of a server-sent event stream as its chunks arrive; comment lines (the
    keep-alives) and events without data are skipped."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            event, data = "message", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data += line[5:].strip()
            if data:
                yield event, orjson.loads(data)


def png_size(answer: dict | None) -> int:
    """Bytes of the first image of an images answer ({"data": [{"b64_json"}]}); 0 without one."""
    try:
        return len(base64.b64decode(answer["data"][0]["b64_json"], validate=True))
    except (KeyError, IndexError, TypeError, binascii.Error):
        return 0


def json_or_none(response) -> dict | None:
    try:
        return response.json()
    except ValueError:
        return None


def api_error(response) -> str:
    """The api's error message (OpenAI's shape), or the start of the body."""
    try:
        return f"{response.status_code} {response.json()['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {(response.text or '')[:200]}"


def settle_in_flight(replay, api_url: str) -> None:
    """Jobs still awaited (the locustfile's Replay) when the run was cut short (--run-time, Ctrl-C): count them by their
    record now; one that is not terminal is lost (and so is an images request without an answer)."""
    job_ids = list(replay.in_flight)
    if not job_ids:
        return
    for job_id, state in zip(job_ids, states_now(replay, job_ids, api_url), strict=True):
        if state == "done":
            replay.tally.done += 1
        elif state in TERMINAL:
            replay.tally.count_unserved(state)
        else:
            replay.tally.lost += 1
        del replay.in_flight[job_id]


def states_now(replay, job_ids: list[str], api_url: str) -> list[str | None]:
    """The jobs' states as their records say now: from Redis, or from the api for the HTTP user."""
    if replay.via == "http":
        return [api_state(api_url, replay.options.api_key, job_id) for job_id in job_ids]
    client = redis.Redis.from_url(replay.options.redis_url, socket_timeout=5)
    try:
        states = [client.hget(f"{replay.options.namespace}:job:{job_id}", "state") for job_id in job_ids]
        return [state.decode() if state else None for state in states]
    finally:
        client.close()


def api_state(api_url: str, key: str, job_id: str) -> str | None:
    if job_id.startswith("images-"):
        return None
    try:
        status, body = http_get(f"{api_url}/v1/jobs/{job_id}", auth_headers(key))
        return orjson.loads(body).get("state") if status == 200 else None
    except (OSError, ValueError):
        return None
