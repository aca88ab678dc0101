"""The api assembled: one Api on the app, the error handlers, the route groups, the middlewares; and the
service's main, which serves it until the service stops."""

from __future__ import annotations

from fastapi import FastAPI

from services.api.errors import install as install_error_handlers
from services.api.middleware import HeaderLimit, RequestMetrics
from services.api.routes import dashboard, images, jobs, ops
from services.api.server import serve, server_for
from services.api.state import Api
from shared.events import EventHub
from shared.service import Service

DESCRIPTION = ("Text-to-image serving within a latency objective: the OpenAI Images API and async jobs. "
               "Authenticate with `Authorization: Bearer <API key>`.")


def create_app(api: Api) -> FastAPI:
    """The route groups in the order of the OpenAPI document, over one Api (app.state.api). The metrics
    middleware is added last, so it is the outermost: a 431 is counted too."""
    app = FastAPI(title="hadis", version="0.1.0", description=DESCRIPTION)
    app.state.api = api
    install_error_handlers(app)
    for group in (images, jobs, ops, dashboard):
        group.routes.add_to(app)
    app.add_middleware(HeaderLimit, limit=api.settings.api_max_header_bytes)
    app.add_middleware(RequestMetrics)
    return app


async def main(service: Service) -> None:
    """The service's body (shared/service.py runs it): the event hub every waiter shares, the URL
    secret made before the first request can need one, then the server until the service stops."""
    hub = EventHub(service.store)
    await hub.start()
    api = Api(service, hub)
    try:
        await api.url_secrets.get()  # the first replica makes the secret
        await serve(server_for(create_app(api), api.settings), service)
    finally:
        await api.dashboard.stop()
        await hub.stop()
