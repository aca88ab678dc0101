"""Every error the api answers, in OpenAI's shape ({"error": {"message", "type", "param", "code"}}):
the api's own refusals, the framework's 404/405 and validation errors, a store away, and whatever
else went wrong (logged, answered 500 without its details)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import Unavailable
from shared.images_api import ApiError, bad_request
from shared.logging import get_logger

log = get_logger(__name__)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error)


async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
    message = f"no route {request.method} {request.url.path}" if error.status_code in (404, 405) \
        else str(error.detail)
    return error_response(ApiError(error.status_code, message, code=code, headers=dict(error.headers or {})))


async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = list(error.errors())
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(part) for part in first["loc"][1:]) or None
    message = str(first["msg"])
    return error_response(bad_request(f"{param}: {message}" if param else message, param=param))


async def on_unavailable(request: Request, error: Unavailable) -> JSONResponse:
    return error_response(ApiError(503, f"the store is unavailable: {error.reason}", type="service_unavailable",
                                   code="unavailable", headers={"Retry-After": "2"}))


async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
    log.error("api_unexpected_error", path=request.url.path, error=repr(error))
    return error_response(ApiError(500, "internal error (logged)", type="server_error", code="internal_error"))


def install(app: FastAPI) -> None:
    """The handlers above on the app, each for its exception type."""
    app.exception_handler(ApiError)(on_api_error)
    app.exception_handler(StarletteHTTPException)(on_http_error)
    app.exception_handler(RequestValidationError)(on_validation_error)
    app.exception_handler(Unavailable)(on_unavailable)
    app.exception_handler(Exception)(on_unexpected)
