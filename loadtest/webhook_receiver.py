"""The mixed scenario's webhook receiver (loadtest/mixed.py): a small HTTP server on 127.0.0.1, in a
greenlet of the Locust process (gevent's pywsgi, so it shares Locust's loop and blocks no user),
that verifies each delivery's Standard Webhooks signature with the tenant's secret(s) and records
it by job, so that the summary can say which jobs got exactly one verified delivery, which got
duplicates (delivery is at least once, docs/jobs.md: counted, not a failure), which a delivery
with a bad signature, and which none.

It answers 204 to a verified delivery (duplicates too: the receiver deduplicates by webhook-id, as
docs/jobs.md tells receivers to) and 401 to one whose signature does not verify (the sender then
retries it, which shows as further bad deliveries, never as a verified one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import gevent.event
from gevent.pywsgi import WSGIServer

log = logging.getLogger("hadis.loadtest")

MAX_BODY_BYTES = 1 << 20  # a delivery is a record's view: far below this (docs/jobs.md, Bounds)


def verify(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks' symmetric signature, as docs/jobs.md gives it: any `v1,` signature of
    the header (two during a rotation's grace) that matches any of the secrets."""
    signed = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    offered = [sig.partition(",")[2] for sig in headers.get("webhook-signature", "").split() if sig.startswith("v1,")]
    for secret in secrets:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            continue
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(sig, expected) for sig in offered):
            return True
    return False


def read_secrets(tenant: str, namespace: str, redis_url: str, hadis: Path | None = None) -> list[str]:
    """The tenant's signing secrets as `hadis webhook show --tenant T` prints them (current first;
    the CLI makes one when the tenant has none yet, as the sender would), from the stack's store."""
    hadis = hadis or Path(sys.executable).with_name("hadis")
    env = {**os.environ, "HADIS_NAMESPACE": namespace, "HADIS_REDIS_URL": redis_url}
    shown = subprocess.run([str(hadis), "webhook", "show", "--tenant", tenant], env=env, capture_output=True,
                           text=True, timeout=60, check=False)
    if shown.returncode != 0:
        raise SystemExit(f"hadis webhook show --tenant {tenant} failed: {shown.stderr[-500:]}")
    return list(json.loads(shown.stdout)["secrets"])


@dataclass
class Delivery:
    received_at: float  # time.time() on receipt
    verified: bool
    state: str | None  # the event's job state (its type's suffix)
    ended_at: float | None  # the event's timestamp: when the job ended (the store's clock)


@dataclass
class Receiver:
    """Deliveries by job id (from the verified body; a bad one is filed under its webhook-id's id)."""

    secrets: list[str]
    on_delivery: Callable[[str, Delivery], None] | None = None
    by_job: dict[str, list[Delivery]] = field(default_factory=dict)
    arrived: dict[str, gevent.event.Event] = field(default_factory=dict)
    server: WSGIServer | None = None

    def start(self, port: int = 0) -> str:
        """Listens on 127.0.0.1:port (0: a free one); returns the URL to give jobs."""
        self.server = WSGIServer(("127.0.0.1", port), self.app, log=None, error_log=None)
        self.server.start()
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)

    def event_for(self, job_id: str) -> gevent.event.Event:
        return self.arrived.setdefault(job_id, gevent.event.Event())

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return [b""]
        length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_BODY_BYTES)
        body = environ["wsgi.input"].read(length)
        headers = {name[5:].replace("_", "-").lower(): value for name, value in environ.items()
                   if name.startswith("HTTP_")}
        delivery, job_id = self.record(headers, body)
        if not delivery.verified:
            start_response("401 Unauthorized", [("Content-Length", "0")])
            return [b""]
        start_response("204 No Content", [])
        return [b""]

    def record(self, headers: dict[str, str], body: bytes) -> tuple[Delivery, str]:
        verified = verify(self.secrets, headers, body)
        webhook_id = headers.get("webhook-id", "")
        job_id, state, ended_at = webhook_id.rpartition(".")[2], None, None
        if verified:
            try:
                event = json.loads(body)
                job_id = str(event["data"]["job_id"])
                state = str(event["type"]).removeprefix("job.")
                ended_at = datetime.fromisoformat(event["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                log.warning("webhook delivery %s: a verified body that is not the documented event", webhook_id)
        delivery = Delivery(time.time(), verified, state, ended_at)
        self.by_job.setdefault(job_id, []).append(delivery)
        self.event_for(job_id).set()
        if self.on_delivery is not None:
            self.on_delivery(job_id, delivery)
        return delivery, job_id
