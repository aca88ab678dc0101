"""The HTTP plumbing under the api's routes: bounded body reading, server-sent events, OpenAI's error
shape, the request metrics and header-size middlewares, and uvicorn inside the service's loop. No
route and no rule of who may do what (services/api.py, services/api_admission.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api_admission import ANONYMOUS, Hold
from shared import metrics
from shared.images_api import ApiError, bad_request
from shared.settings import Settings


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (its body was read already: the next message is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its own body (to bound its size and time)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


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


def server_for(app: FastAPI, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, http="h11", lifespan="off", log_config=None,
        access_log=False, server_header=False, limit_concurrency=settings.api_max_connections,
        h11_max_incomplete_event_size=settings.api_max_header_bytes, timeout_keep_alive=5,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or 1)
    return _Server(config)


async def b64_body(read_image: Callable[[str], Awaitable[bytes | None]], head: dict[str, Any],
                   job_ids: list[str]) -> AsyncIterator[bytes]:
    """The images response with its PNGs in base64, one image in memory at a time: n large images
    never sit in the api together, nor their encodings (about 5 times their bytes as one body)."""
    yield orjson.dumps(head)[:-1] + b',"data":['
    for index, job_id in enumerate(job_ids):
        png = await read_image(job_id) or b""
        yield (b"," if index else b"") + b'{"b64_json":"' + base64.b64encode(png) + b'","revised_prompt":null}'
    yield b"]}"
