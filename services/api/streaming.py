"""What the api holds a connection open for: a request that waits for its jobs to end (the images
route), an event stream of a job's state changes, and an images body streamed one PNG at a time.
Each ends when its client goes, so a gone client holds nothing until its deadline."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.api.admission import Hold
from services.api.state import Api
from shared.events import JobEvent
from shared.images_api import ApiError
from shared.schemas import JobRecord

RECHECK_S = 5.0  # a waiter reads the record again at least this often (an event can be missed)
KEEPALIVE_S = 15.0  # an SSE comment line this often keeps proxies from closing an idle stream
STREAM_GRACE_S = 60.0  # an event stream ends this long after the job's deadline, terminal or not


async def wait_terminal(api: Api, job_ids: list[str], give_up_at: float,
                        request: Request | None = None) -> dict[str, JobRecord]:
    """The records of these jobs once terminal; those not terminal by give_up_at are absent. A
    client that disconnects stops the wait (499): it holds no waiter until the deadline."""
    if request is None:
        return await _wait_terminal(api, job_ids, give_up_at)
    waiting = asyncio.ensure_future(_wait_terminal(api, job_ids, give_up_at))
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


async def _wait_terminal(api: Api, job_ids: list[str], give_up_at: float) -> dict[str, JobRecord]:
    records: dict[str, JobRecord] = {}
    with api.hub.subscribe(job_ids) as events:
        await _read_terminal(api, job_ids, records)
        while len(records) < len(job_ids) and (remaining := give_up_at - time.time()) > 0:
            event = await next_event(events, min(remaining, RECHECK_S))
            if event is None:
                await _read_terminal(api, job_ids, records)
            elif event.state.terminal and event.job_id not in records:
                await _read_terminal(api, [event.job_id], records)
    return records


async def _read_terminal(api: Api, job_ids: list[str], records: dict[str, JobRecord]) -> None:
    for job_id in job_ids:
        if job_id not in records:
            record = await api.store.get(job_id)
            if record is not None and record.state.terminal:
                records[job_id] = record


async def next_event(events: asyncio.Queue[JobEvent], timeout_s: float) -> JobEvent | None:
    """The next event within timeout_s, else None. asyncio.timeout, not wait_for: on Python 3.11
    wait_for swallows a cancellation that meets a completed get, and a waiter whose client left
    would then wait on until the deadline."""
    try:
        async with asyncio.timeout(timeout_s):
            return await events.get()
    except TimeoutError:
        return None


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (its body was read already: the next message is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def event_stream(api: Api, tenant: str, job_id: str, give_up_at: float,
                       previews: bool = False) -> AsyncIterator[bytes]:
    """The record's history as events (`event: state`), then each new change, until the terminal
    one; while it waits, its place in line and ETA when they change (`event: position`); while it
    generates, its batch's steps (`event: progress`, at most twice a second: the worker's writes,
    services/cancels.py); with `previews`, each preview the job asked for (`event: preview`, the image
    in base64: services/api/previews.py); a comment line every KEEPALIVE_S; `event: timeout` if
    the job is still open at give_up_at. A progress event is sent as it comes: the record is read
    again only for a state change (or every RECHECK_S)."""
    sent, record, where = 0, None, None
    last_sent_at = time.monotonic()
    with api.hub.subscribe([job_id]) as events:
        event: JobEvent | None = None
        while True:
            if event is None or event.step is None:
                read_at = time.time()  # before the read: a change the record misses is later (in order)
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
                if (now_where := await api.whereabouts.of(record)) != where:  # its place in line moved
                    where = now_where
                    seen_at = max(read_at, record.history[-1].at) if record.history else read_at
                    yield sse("position", {"job_id": job_id, "at": seen_at, "state": record.state.value, **where})
            elif event.preview is not None:
                if previews and (data := (await api.store.get_previews(job_id, [event.preview]))[0]) is not None:
                    yield sse("preview", {"job_id": job_id, "index": event.preview, "step": event.step,
                                          "steps": event.steps, "b64_json": base64.b64encode(data).decode()})
                    last_sent_at = time.monotonic()
            else:
                yield sse("progress", {"job_id": job_id, "at": event.at, "step": event.step, "steps": event.steps,
                                       "model": event.model, "eta_s": api.whereabouts.running_eta(
                                           record.tier if record else None, event.model, event.step,
                                           event.steps or 0)})
                last_sent_at = time.monotonic()
            if api.service.stopping.is_set() or time.time() >= give_up_at:
                yield sse("timeout", {"job_id": job_id, "state": record.state.value if record else None})
                return
            wait_s = min(RECHECK_S, KEEPALIVE_S - (time.monotonic() - last_sent_at), give_up_at - time.time())
            event = await next_event(events, max(wait_s, 0.01))
            if event is None and time.monotonic() - last_sent_at >= KEEPALIVE_S - 0.01:
                yield b": keep-alive\n\n"
                last_sent_at = time.monotonic()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class HeldStream(StreamingResponse):
    """A stream that gives its waiter back when it ends, however it ends (the client gone before
    the first byte included): the stream's generator may never run."""

    def __init__(self, content: AsyncIterator[bytes], hold: Hold, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hold.release()


async def b64_body(read_image: Callable[[str], Awaitable[bytes | None]], head: dict[str, Any],
                   job_ids: list[str]) -> AsyncIterator[bytes]:
    """The images response with its PNGs in base64, one image in memory at a time: n large images
    never sit in the api together, nor their encodings (about 5 times their bytes as one body)."""
    yield orjson.dumps(head)[:-1] + b',"data":['
    for index, job_id in enumerate(job_ids):
        png = await read_image(job_id) or b""
        yield (b"," if index else b"") + b'{"b64_json":"' + base64.b64encode(png) + b'","revised_prompt":null}'
    yield b"]}"
