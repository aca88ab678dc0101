"""The api's two middlewares, pure ASGI (a stream passes untouched, with no per-chunk cost): the
request metrics, and the bound on a request's headers."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response
from services.api.keys import ANONYMOUS
from shared import metrics
from shared.images_api import ApiError


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
