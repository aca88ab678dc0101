"""The api's routes by group: images.py the OpenAI Images API, jobs.py the async job routes, ops.py
health, dashboard.py the operator's page. Each group's routes are plain module functions over the
app's Api (state.api_of), declared on a RouteGroup and added to the app by create_app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class RouteGroup:
    """Routes declared beside their functions, as on an APIRouter (@routes.get(path, ...)), and added
    to an app flat, exactly as app.get(path, ...) would add them. Not APIRouter + include_router:
    FastAPI matches an included router's routes through a layer of its own on every request, which
    cost about a third more per request in the router and middlewares (measured on the 401 path)."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []

    def route(self, path: str, method: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        def declare(endpoint: Endpoint) -> Endpoint:
            self._routes.append((path, endpoint, {"methods": [method], **options}))
            return endpoint

        return declare

    def get(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, "GET", **options)

    def post(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, "POST", **options)

    def delete(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route(path, "DELETE", **options)

    def add_to(self, app: FastAPI) -> None:
        """The group's routes on the app, in the order they were declared (the OpenAPI document's)."""
        for path, endpoint, options in self._routes:
            app.add_api_route(path, endpoint, **options)
