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
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str, cors: bool = True) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status, headers=CORS_HEADERS if cors else None,
                    media_type="application/json")
