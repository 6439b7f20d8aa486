"""The thin HTTP layer: bounded JSON bodies and pre-encoded JSON answers.

Edge endpoints (and /healthz, the constant-body endpoint they are benchmarked against)
are plain ASGI callables wrapped by `Endpoint`: they read headers straight from the ASGI
scope and send pre-built header lists, skipping Starlette's per-request Request/Response
objects. That took the session endpoint from ~0.6x to ~0.66x of the constant endpoint in
a side-by-side run. Errors are raised as exceptions and turned into the contract's error
shape by the app's exception handlers, as for every other route.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Collection

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import CORS_HEADERS, ApiError

_JSON_TYPES = {b"application/json", b"text/plain", b""}
_JSON = (b"content-type", b"application/json")
_CORS_RAW = [(k.encode(), v.encode()) for k, v in CORS_HEADERS.items()]


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int,
                    media_types: Collection[bytes] | None = None) -> bytes:
    """The request body, at most `limit` bytes, sent as JSON or text/plain (or one of
    `media_types`); else ApiError."""
    ctype = b""
    declared = None
    for key, value in scope["headers"]:
        if key == b"content-type":
            ctype = value
        elif key == b"content-length":
            declared = value
    media = ctype.split(b";", 1)[0].strip().lower()
    if media not in (media_types or _JSON_TYPES):
        raise ApiError(415, "unsupported_media_type",
                       f"send JSON as application/json or text/plain, not {media.decode('latin-1')!r}")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
        if len(body) > limit:  # chunked uploads have no Content-Length to check first
            raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    if len(body) > limit:
        raise ApiError(413, "too_large", f"the body is over {limit} bytes")
    return body


async def send_json(send: Send, body: bytes, status: int = 200, cors: bool = True) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if cors:
        headers += _CORS_RAW
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Handler = Callable[[Scope, Receive], Awaitable[bytes]]


class Endpoint:
    """An ASGI endpoint whose handler returns the JSON body of a 200 answer."""

    def __init__(self, handler: Handler, cors: bool = True) -> None:
        self.handler = handler
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, await self.handler(scope, receive), 200, self.cors)


class JSONBytes(Response):
    """A Starlette response for already-encoded JSON (admin routes)."""

    def __init__(self, body: bytes, status: int = 200, cors: bool = True) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        raw = [_JSON, (b"content-length", str(len(body)).encode())]
        if cors:
            raw += _CORS_RAW
        self.raw_headers = raw


def json_response(body: bytes, status: int = 200, cors: bool = True) -> Response:
    return JSONBytes(body, status, cors)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's default protocol, plain-text 400s
    HttpProtocol = None
else:
    class HttpProtocol(HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol, except that a request it cannot parse (a bad
        request line, a Content-Length that is no number...) gets the contract's error
        shape, with CORS headers, rather than uvicorn's plain-text 400."""

        def send_400_response(self, msg: str) -> None:
            body = orjson.dumps({"error": {"code": "bad_request",
                                           "message": f"not a valid HTTP request ({msg})"}})
            head = [b"HTTP/1.1 400 Bad Request"]
            head += [name + b": " + value for name, value in self.server_state.default_headers]
            head += [k + b": " + v for k, v in (_JSON, *_CORS_RAW)]
            head += [b"content-length: %d" % len(body), b"connection: close", b"", b""]
            self.transport.write(b"\r\n".join(head) + body)
            self.transport.close()
