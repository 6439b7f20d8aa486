"""Request helpers shared by the edge and admin routes: bounded bodies, JSON answers."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import CORS_HEADERS, ApiError

_JSON_TYPES = {"application/json", "text/plain", ""}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes, as JSON or text/plain; else ApiError."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON as application/json or text/plain, not {media!r}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_response(body: bytes, status: int = 200, cors: bool = True) -> Response:
    return Response(body, status, headers=CORS_HEADERS if cors else None,
                    media_type="application/json")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
