"""The contract's error shape: {"error": {"code": "<snake_case>", "message": "..."}}."""

from __future__ import annotations

import orjson
from starlette.responses import Response

CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET, OPTIONS",
    "access-control-allow-headers": "Content-Type",
    "access-control-max-age": "86400",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str, cors: bool = True,
                   headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    all_headers = {**CORS_HEADERS, **(headers or {})} if cors else headers
    return Response(body, status, headers=all_headers, media_type="application/json")
