"""The operator's live status page: `/dashboard` (static: one HTML, one script, one style sheet, package
data of services.api) and its data behind an operator's key (hadis api-key create --operator):

    GET /dashboard                               the page (no data in it: it asks for the key)
    GET /dashboard/{dashboard.js,dashboard.css}  its script and style
    GET /v1/ops/dashboard                        the latest snapshot (JSON)
    GET /v1/ops/dashboard/stream                 server-sent events: a snapshot per tick (about 1/s)
    GET /v1/ops/dashboard/jobs/{id}/thumbnail    a recent job's image, at most THUMBNAIL_PX a side (PNG)

Why the key travels in a header and the page carries none: a browser sends no Bearer header on a
navigation, so the page is a shell that holds no data; the operator pastes the key into it, the
script keeps it in sessionStorage (this tab only, gone when it closes) and sends it as
`Authorization: Bearer` on every fetch, the event stream included (read with fetch, since
EventSource cannot send headers) and the thumbnails (fetched, shown from blob: URLs). A key in a
URL would land in logs, history and Referer headers; a cookie would be sent by the browser on
requests another site makes (CSRF) and need a session store. docs/observability-page.md."""

from __future__ import annotations

import asyncio
import io
from collections import OrderedDict
from functools import lru_cache
from importlib import resources

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from PIL import Image

from services.api.dashboard import MAX_VIEWERS
from services.api.routes import RouteGroup
from services.api.state import api_of
from shared.images_api import ApiError, not_found
from shared.schemas import valid_job_id

routes = RouteGroup()

ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# Nothing from anywhere else: no CDN, no fonts; images from this origin's fetches (blob:).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
}
DATA_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
THUMBNAIL_PX = 96
THUMBNAILS_KEPT = 64


@lru_cache(maxsize=4)
def asset(name: str) -> bytes:
    """A file of the page, read once (services/api/static/, package data)."""
    return (resources.files("services.api") / "static" / name).read_bytes()


@routes.get("/dashboard", include_in_schema=False)
async def page(request: Request) -> Response:
    return Response(asset("dashboard.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@routes.get("/dashboard/{name}", include_in_schema=False)
async def page_asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise not_found("file")
    return Response(asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)


@routes.get("/v1/ops/dashboard", tags=["Operations"], summary="The fleet's live status (an operator's key)")
async def snapshot(request: Request) -> Response:
    api = api_of(request)
    await api.keys.operator(request)
    data = await api.dashboard.snapshot()
    if not data:
        raise ApiError(503, "the dashboard has no snapshot yet (the store or the broker is away)",
                       type="service_unavailable", code="unavailable", headers={"Retry-After": "2"})
    return Response(data, media_type="application/json", headers=DATA_HEADERS)


@routes.get("/v1/ops/dashboard/stream", tags=["Operations"],
            summary="Server-sent events: the fleet's status, about once a second (an operator's key)",
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(request: Request) -> StreamingResponse:
    api = api_of(request)
    await api.keys.operator(request)
    dashboard = api.dashboard
    if dashboard.viewers >= MAX_VIEWERS:
        raise ApiError(429, f"{MAX_VIEWERS} dashboard streams are open already", type="rate_limit_error",
                       code="too_many_viewers", headers={"Retry-After": "10"})

    async def frames():
        with dashboard.viewing():
            async for frame in dashboard.frames():
                yield frame

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={**DATA_HEADERS, "X-Accel-Buffering": "no"})


class Thumbnails:
    """The last THUMBNAILS_KEPT thumbnails made: every viewer of a recent job costs one."""

    def __init__(self) -> None:
        self.kept: OrderedDict[str, bytes] = OrderedDict()

    def get(self, job_id: str) -> bytes | None:
        if job_id in self.kept:
            self.kept.move_to_end(job_id)
        return self.kept.get(job_id)

    def put(self, job_id: str, png: bytes) -> None:
        self.kept[job_id] = png
        while len(self.kept) > THUMBNAILS_KEPT:
            self.kept.popitem(last=False)


THUMBNAILS = Thumbnails()


def shrink(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


@routes.get("/v1/ops/dashboard/jobs/{job_id}/thumbnail", tags=["Operations"],
            summary="A job's image, small (an operator's key; any tenant's job)",
            responses={200: {"content": {"image/png": {}}}})
async def thumbnail(job_id: str, request: Request) -> Response:
    api = api_of(request)
    await api.keys.operator(request)
    if not valid_job_id(job_id):
        raise not_found()
    small = THUMBNAILS.get(job_id)
    if small is None:
        png = await api.store.get_image(job_id)
        if png is None:
            raise ApiError(404, "the job has no image stored (not done, or expired)", code="no_image")
        try:
            small = await asyncio.to_thread(shrink, png)
        except (OSError, ValueError) as error:
            raise ApiError(500, f"the stored image does not decode: {error}", type="server_error",
                           code="image_unreadable") from None
        THUMBNAILS.put(job_id, small)
    return Response(small, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
