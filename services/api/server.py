"""uvicorn inside the service's event loop, bounded by the settings, from start to a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from shared import metrics
from shared.logging import get_logger
from shared.service import Service
from shared.settings import Settings

log = get_logger(__name__)


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


async def serve(server: _Server, service: Service) -> None:
    """Serves until the service stops (or the server does); ready only once the port listens, and
    a server that cannot start (the port is taken) raises why."""
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        while not server.started:
            if serving.done():
                await serving  # raises why it could not start (the port is taken)
                raise RuntimeError("the HTTP server stopped before it started")
            await asyncio.sleep(0.05)
        metrics.mark_ready("api")
        log.info("api_ready", host=service.settings.api_host, port=service.settings.api_port)
        stopping = asyncio.create_task(service.stopping.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        metrics.mark_ready("api", False)
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
