"""Operations: health, for load balancers and the compose healthcheck."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse

from services.api.routes import RouteGroup
from services.api.state import api_of
from shared.errors import HadisError

routes = RouteGroup()


@routes.get("/healthz", tags=["Operations"], summary="200 when the store and the broker answer")
async def healthz(request: Request) -> JSONResponse:
    api = api_of(request)
    try:
        await asyncio.wait_for(api.store.ping(), 2.0)
        consumers = await asyncio.wait_for(api.service.bus.consumers(api.service.bus.queues.requests), 2.0)
    except (TimeoutError, HadisError, OSError) as error:
        return JSONResponse({"status": "unavailable", "error": str(error)}, status_code=503)
    # 200 without routers too: jobs are durable in the queue; `ingress_consumers` says whether
    # anything takes them now.
    return JSONResponse({"status": "ok", "ingress_consumers": consumers, "waiters": api.admission.waiters})
