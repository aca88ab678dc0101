"""Request bodies: the routes that take one read it themselves, within a size and a time bound, so
a slow or huge body costs the api no more than HADIS_API_MAX_BODY_BYTES and HADIS_API_BODY_TIMEOUT_S."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel

from shared.images_api import ApiError, bad_request


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


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its own body (to bound its size and time)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}
