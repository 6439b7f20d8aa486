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
                     PoolCreate, PoolId, PoolUpdate, SessionResponse, VisitorId)


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
           PoolUpdate, NumbersAdd, CallRequest, Error]

# Every error code the broker answers with, by status (the body is always `Error`).
ERROR_CODES = {
    "400": "bad_json, bad_request",
    "401": "unauthorized",
    "403": "bad_signature (a telephony webhook's signature does not match)",
    "404": "pool_not_found, number_not_found, not_found",
    "405": "method_not_allowed",
    "409": "number_in_use, not_enough_numbers, pool_busy",
    "413": "too_large",
    "415": "unsupported_media_type",
    "422": "missing_field, invalid_body, invalid_field, too_long, invalid_pool_id, "
           "invalid_visitor_id, invalid_session_id, invalid_session_ttl, invalid_policy, "
           "invalid_number, invalid_call_id, invalid_at, invalid_target, invalid_provider, invalid_count, "
           "invalid_area_code, invalid_pattern, invalid_country, provider_not_configured, "
           "too_many_pools, no_target_number",
    "429": "rate_limited (with Retry-After)",
    "500": "internal",
    "502": "provider_error",
    "503": "redis_unavailable, redis_full, not_ready, snippet_missing",
}
SESSION_STATUSES = ["new", "reused", "fallback", "unavailable", "excluded"]
HEARTBEAT_STATUSES = ["alive", "expired"]

_Q = {"pools": "Comma-separated pool ids", "target": "Probability in (0, 1) that a visitor "
      "finds no free number (default 0.01)", "pool": "A pool id: the demo page for it"}

# (method, path, summary, request struct, response struct, auth, success status, query)
OPERATIONS: list[tuple[str, str, str, type | None, type | None, bool, str, tuple[str, ...]]] = [
    ("post", "/v1/dni/session", "Reuse or assign the visitor's tracking number",
     SessionBody, SessionResponse, False, "200", ()),
    ("post", "/v1/dni/heartbeat", "Keep a session alive", HeartbeatRequest,
     HeartbeatResponse, False, "200", ()),
    ("get", "/healthz", "200 while the process is up", None, None, False, "200", ()),
    ("get", "/readyz", "200 when Redis answers and the scripts are loaded, else 503", None,
     None, False, "200", ()),
    ("get", "/snippet.js", "The tracking snippet", None, None, False, "200", ()),
    ("get", "/snippet.{hash8}.js", "The snippet pinned to one build (cached for a year; "
     "use with its SRI hash)", None, None, False, "200", ()),
    ("get", "/v1/dni/config", "Target numbers of pools, for the snippet", None, None, False,
     "200", ("pools",)),
    ("get", "/v1/dni/snippet", "The pinned snippet URL and its SRI hash", None, None, False,
     "200", ()),
    ("get", "/demo", "A demo page running the snippet on a pool", None, None, False, "200",
     ("pool",)),
    ("get", "/openapi.json", "This document", None, None, False, "200", ()),
    ("post", "/v1/pools", "Create a pool", PoolCreate, None, True, "201", ()),
    ("get", "/v1/pools", "List pools", None, None, True, "200", ()),
    ("get", "/v1/stats", "Stats of every pool", None, None, True, "200", ("target",)),
    ("get", "/v1/pools/{pool_id}", "Show a pool", None, None, True, "200", ()),
    ("patch", "/v1/pools/{pool_id}", "Change a pool (fields left out are unchanged; null "
     "clears an optional one)", PoolUpdate, None, True, "200", ()),
    ("delete", "/v1/pools/{pool_id}", "Delete a pool, ending its sessions", None, None, True,
     "204", ()),
    ("post", "/v1/pools/{pool_id}/numbers", "Add (or buy) numbers", NumbersAdd, None, True,
     "200", ()),
    ("delete", "/v1/pools/{pool_id}/numbers/{number}", "Remove a number; the session "
     "holding it ends", None, None, True, "204", ()),
    ("post", "/v1/pools/{pool_id}/numbers/{number}/deactivate", "Never assign a number "
     "again (its session goes on)", None, None, True, "200", ()),
    ("post", "/v1/pools/{pool_id}/numbers/{number}/activate", "Assign a number again", None,
     None, True, "200", ()),
    ("get", "/v1/pools/{pool_id}/stats", "Numbers, active sessions, utilization, sizing",
     None, None, True, "200", ("target",)),
    ("post", "/v1/calls", "Attribute a call (JSON with the admin token, or a signed "
     "Twilio webhook form)", CallRequest, None, True, "200", ()),
    ("get", "/v1/streams", "Stream lengths, consumer groups and sidecar counters", None,
     None, True, "200", ()),
]

_TWILIO_FORM = {"type": "object", "required": ["To", "CallSid"], "properties": {
    "To": {"type": "string"}, "From": {"type": "string"}, "CallSid": {"type": "string"}},
    "description": "Twilio's voice webhook form; authenticated by X-Twilio-Signature"}


def _ecma_patterns(node: Any) -> None:
    """msgspec patterns end in \\Z (Python's end of string); JSON Schema's regexes are
    ECMA-262, where `$` without the multiline flag means the same."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("\\Z"):
            node["pattern"] = pattern[:-2] + "$"
        for value in node.values():
            _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        STRUCTS, ref_template="#/components/schemas/{name}")
    _ecma_patterns(components)
    components["SessionResponse"]["properties"]["status"]["enum"] = SESSION_STATUSES
    components["HeartbeatResponse"]["properties"]["status"]["enum"] = HEARTBEAT_STATUSES
    components["ErrorDetail"]["properties"]["code"]["description"] = "; ".join(
        f"{status}: {codes}" for status, codes in ERROR_CODES.items())
    ref = "#/components/schemas/{}".format
    error = {"application/json": {"schema": {"$ref": ref("Error")}}}
    paths: dict[str, Any] = {}
    for method, path, summary, req, res, auth, ok, query in OPERATIONS:
        success: dict[str, Any] = {"description": "No content" if ok == "204" else "OK"}
        if res is not None:
            success["content"] = {"application/json": {"schema": {"$ref": ref(res.__name__)}}}
        op: dict[str, Any] = {"summary": summary, "responses": {
            ok: success,
            "4XX": {"description": "Rejected (codes: see ErrorDetail.code)", "content": error},
            "5XX": {"description": "Failed (codes: see ErrorDetail.code)", "content": error}}}
        if req is not None:
            schema = {"$ref": ref(req.__name__)}
            content = {"application/json": {"schema": schema}}
            if path.startswith("/v1/dni/"):
                content["text/plain"] = {"schema": schema}  # simple CORS requests
            if req is CallRequest:
                content["application/x-www-form-urlencoded"] = {"schema": _TWILIO_FORM}
            op["requestBody"] = {"required": True, "content": content}
        if auth:
            op["security"] = [{"bearer": []}]
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in ("pool_id", "number", "hash8") if "{" + name + "}" in path]
        params += [{"name": name, "in": "query", "required": False, "description": _Q[name],
                    "schema": {"type": "string"}} for name in query]
        if params:
            op["parameters"] = params
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
