"""GET /openapi.json: the HTTP API as an OpenAPI 3.1 document.

Request and response bodies come from the msgspec Structs that validate them, so the
schema cannot drift from what the broker accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__
from .calls import CallRequest
from .http import dumps, json_response
from .models import (Attribution, HeartbeatRequest, HeartbeatResponse, NumbersAdd,
                     PoolCreate, PoolId, SessionResponse, VisitorId)


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class Error(msgspec.Struct):
    error: ErrorDetail


class SessionBody(Attribution, kw_only=True):
    """POST /v1/dni/session: the ids plus the page's source (only the ids are required)."""

    pool_id: PoolId
    visitor_id: VisitorId


STRUCTS = [SessionBody, SessionResponse, HeartbeatRequest, HeartbeatResponse, PoolCreate,
           NumbersAdd, CallRequest, Error]

# (method, path, summary, request struct, response struct or None, auth)
OPERATIONS: list[tuple[str, str, str, type | None, type | None, bool]] = [
    ("post", "/v1/dni/session", "Reuse or assign the visitor's tracking number",
     SessionBody, SessionResponse, False),
    ("post", "/v1/dni/heartbeat", "Keep a session alive", HeartbeatRequest,
     HeartbeatResponse, False),
    ("get", "/healthz", "200 while the process is up", None, None, False),
    ("get", "/readyz", "200 when Redis answers and the scripts are loaded", None, None, False),
    ("get", "/snippet.js", "The tracking snippet", None, None, False),
    ("get", "/v1/dni/config", "Target numbers of pools (?pools=ID,ID), for the snippet",
     None, None, False),
    ("get", "/v1/dni/snippet", "The pinned snippet URL and its SRI hash", None, None, False),
    ("post", "/v1/pools", "Create a pool", PoolCreate, None, True),
    ("get", "/v1/pools", "List pools", None, None, True),
    ("get", "/v1/pools/{pool_id}", "Show a pool", None, None, True),
    ("post", "/v1/pools/{pool_id}/numbers", "Add numbers", NumbersAdd, None, True),
    ("get", "/v1/pools/{pool_id}/stats", "Numbers, active sessions, utilization", None,
     None, True),
    ("post", "/v1/calls", "Attribute a call (JSON with the admin token, or a signed "
     "Twilio webhook form)", CallRequest, None, True),
    ("get", "/v1/streams", "Stream lengths, consumer groups and sidecar counters", None,
     None, True),
]


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        STRUCTS, ref_template="#/components/schemas/{name}")
    ref = "#/components/schemas/{}".format
    paths: dict[str, Any] = {}
    for method, path, summary, req, res, auth in OPERATIONS:
        op: dict[str, Any] = {"summary": summary, "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "Error", "content": {"application/json": {
                "schema": {"$ref": ref("Error")}}}}}}
        if res is not None:
            op["responses"]["200"]["content"] = {"application/json": {
                "schema": {"$ref": ref(res.__name__)}}}
        if req is not None:
            schema = {"$ref": ref(req.__name__)}
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": schema}, "text/plain": {"schema": schema}}}
        if auth:
            op["security"] = [{"bearer": []}]
        if "{pool_id}" in path:
            op["parameters"] = [{"name": "pool_id", "in": "path", "required": True,
                                 "schema": {"type": "string"}}]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "DNI broker", "version": __version__},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


_doc: bytes | None = None


async def openapi(request: Request) -> Response:
    global _doc
    if _doc is None:
        _doc = dumps(build())
    return json_response(_doc)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
