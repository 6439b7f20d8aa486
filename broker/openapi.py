"""GET /openapi.json: the HTTP API as an OpenAPI 3.1 document.

Where each schema comes from:
- Request bodies: the msgspec Structs that decode and validate them (models.py,
  calls.CallRequest), so they cannot drift from what the broker accepts. Two are written
  here: `SessionBody`, because the edge decodes a session body twice (SessionRequest for
  the ids, Attribution for the source) and the document shows the two as one; and the
  Twilio form of POST /v1/calls, which calls.py parses by hand (`_TWILIO_FORM`).
- The edge's answers (POST /v1/dni/session, /heartbeat): the Structs that encode them
  (models.SessionResponse, models.HeartbeatResponse), with their status enums added here.
- Every other JSON answer: its handler builds a plain dict (pools.py, stats.py, calls.py,
  streams.py, snippet.py) or constant bytes (/healthz, /readyz in app.py), and the Structs
  below, used for nothing but this document, describe it. Nothing ties the two together
  by construction: tests/test_openapi.py makes every documented request against a real
  broker and validates each answer against this document. The shapes are closed
  (additionalProperties: false) and name their required fields, so a field that a handler
  adds, renames or drops fails that test until the Struct here follows.
- The snippet and the demo page are plain strings, and /openapi.json an object naming its
  top-level keys; headers (CORS, ETag, Cache-Control, the scripts' CORP) and the 304s of
  the cacheable routes come from the `Op` table, Cache-Control values from snippet.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__
from .calls import CallRequest
from .errors import CORS_HEADERS
from .http import dumps, json_response
from .models import (ATTRIBUTION_FIELDS, POOL_ID_PATTERN, Attribution, HeartbeatRequest,
                     HeartbeatResponse, NumbersAdd, PoolCreate, PoolId, PoolUpdate, SessionId,
                     SessionResponse, VisitorId)
from .snippet import CONFIG_CACHE, MAX_POOLS, PINNED_CACHE, SCRIPT_CACHE


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class Error(msgspec.Struct):
    error: ErrorDetail


class SessionBody(Attribution, kw_only=True):
    """POST /v1/dni/session: the ids plus the page's source (only the ids are required)."""

    pool_id: PoolId
    visitor_id: VisitorId


# -- answers: schema only (see the module docstring) --------------------------------------

E164 = Annotated[str, Meta(pattern=r"^\+[1-9][0-9]{1,14}$", description="E.164")]
EpochMs = Annotated[int, Meta(ge=0, description="epoch milliseconds")]
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]


class _Answer(msgspec.Struct, forbid_unknown_fields=True):
    # forbid_unknown_fields: the schema says additionalProperties: false
    pass


class Health(_Answer):
    """GET /healthz: the process is up."""

    status: Literal["ok"]


class Ready(_Answer):
    """GET /readyz: Redis answers and the scripts are loaded."""

    status: Literal["ready"]


class Pool(_Answer):
    """The pool object (GET, PATCH /v1/pools/{pool_id}; GET /v1/pools)."""

    id: PoolId
    name: str
    website_url: str | None
    target_number: Annotated[E164 | None, Meta(
        description="the site's own number, which the snippet swaps")]
    call_flow: Annotated[str | None, Meta(
        description="the call flow numbers added to the pool route to")]
    fallback_number: Annotated[E164 | None, Meta(
        description="the backup number answered when no pool number is free")]
    policy: Literal["random", "lru"]
    session_ttl_s: Annotated[int, Meta(ge=1, le=86400, description="session length")]
    heartbeat_s: Annotated[int, Meta(ge=1, description=(
        "DNI_HEARTBEAT_S (the session answer tells the snippet at most half the session "
        "length)"))]
    created_at: Annotated[int, Meta(ge=0, description=(
        "epoch milliseconds; 0 for a pool that was created before the broker recorded it"))]
    numbers: Annotated[list[E164], Meta(description="the active numbers, sorted")]
    inactive_numbers: Annotated[list[E164], Meta(
        description="deactivated numbers, sorted: never assigned until activated again")]
    call_flows: Annotated[dict[str, str], Meta(
        description="number (E.164) -> the call flow it routes to, for numbers that have one")]


_BOUGHT = Meta(description="the numbers bought (present only when the request had `buy`)")


class PoolCreated(Pool):
    """POST /v1/pools: the new pool object."""

    bought: Annotated[list[E164], _BOUGHT] | UnsetType = UNSET


class PoolList(_Answer):
    """GET /v1/pools: every pool, sorted by id."""

    pools: list[Pool]


class NumbersAdded(Pool):
    """POST /v1/pools/{pool_id}/numbers: the pool object after the change, and counts."""

    added: Annotated[Count, Meta(description="numbers new to the pool")]
    reactivated: Annotated[Count, Meta(
        description="deactivated numbers of the pool that are active again")]
    bought: Annotated[list[E164], _BOUGHT] | UnsetType = UNSET


_CHANGED = Meta(description="false when the number was in that state already")


class NumberActivated(_Answer):
    """POST /v1/pools/{pool_id}/numbers/{number}/activate."""

    pool_id: PoolId
    number: E164
    active: Literal[True]
    changed: Annotated[bool, _CHANGED]


class NumberDeactivated(_Answer):
    """POST /v1/pools/{pool_id}/numbers/{number}/deactivate."""

    pool_id: PoolId
    number: E164
    active: Literal[False]
    changed: Annotated[bool, _CHANGED]


class AnswerCounts(_Answer):
    """Session answers by status (`excluded` is not counted here)."""

    new: Count
    reused: Count
    fallback: Count
    unavailable: Count


class CountWindows(_Answer):
    last_hour: AnswerCounts
    last_day: AnswerCounts


class Peaks(_Answer):
    """The most sessions live at once (sampled about once a second)."""

    last_hour: Count
    last_day: Count


class Sizing(_Answer):
    """Erlang B sizing from the last hour's arrivals and holding time."""

    target_fallback: Annotated[float, Meta(gt=0, lt=1, description="query `target`")]
    arrivals_per_s: Annotated[float, Meta(ge=0, description=(
        "sessions started plus distinct visitors turned away, per second, in the busiest "
        "15 minutes of the last hour: the rate sized for"))]
    arrivals_per_s_last_hour: Annotated[float, Meta(ge=0, description=(
        "the same over the whole last hour (or the pool's age, if younger)"))]
    blocked_visitors_last_hour: Count
    ended_sessions_last_hour: Annotated[Count, Meta(
        description="leases that ended in the last hour (their mean length is the holding "
                    "time)")]
    mean_visit_s: Seconds
    holding_time_s: Annotated[Seconds, Meta(description=(
        "the mean length of the leases that ended in the last hour; before any ended, the "
        "visit length plus one session length"))]
    offered_load_erlangs: Annotated[float, Meta(ge=0)]
    fallback_probability: Annotated[float, Meta(ge=0, le=1, description=(
        "Erlang B blocking probability at the current size"))]
    recommended_size: Annotated[Count, Meta(description=(
        "the smallest pool whose blocking probability is at most target_fallback"))]


class PoolStats(_Answer):
    """GET /v1/pools/{pool_id}/stats: one pool's numbers, sessions, counts and sizing."""

    pool_id: PoolId
    numbers: Annotated[Count, Meta(description="active numbers")]
    inactive_numbers: Count
    active_sessions: Annotated[Count, Meta(
        description="live sessions, those on deactivated numbers included")]
    available: Annotated[Count, Meta(description="active numbers no session holds")]
    utilization: Annotated[float, Meta(ge=0, description=(
        "active_sessions / numbers (0 without numbers), rounded to 4 places"))]
    at: EpochMs
    counts: CountWindows
    peak_concurrent: Peaks
    pressure: Annotated[bool, Meta(description=(
        "a sample in the last hour found 80% or more of the active numbers held"))]
    pressure_since: Annotated[EpochMs | None, Meta(
        description="when the current spell of pressure started; null without pressure")]
    sizing: Sizing


class StatsList(_Answer):
    """GET /v1/stats: the stats of every pool, sorted by pool id."""

    pools: list[PoolStats]


CallAttribution = msgspec.defstruct(
    "CallAttribution",
    [(name, str | UnsetType, UNSET) for name in (*ATTRIBUTION_FIELDS, "ip", "user_agent")],
    bases=(_Answer,), module=__name__,
    namespace={"__doc__": "The session's source: the fields the page gave, the visitor's IP "
               "(as DNI_IP_MODE stores it) and user agent"})

_CALL_FROM = Meta(description="the caller's number, or null when the caller id is no number")
_CALL_FROM_RAW = Meta(description="the caller id when it is no number (\"Anonymous\"...)")


class CallAttributed(_Answer, kw_only=True):
    """POST /v1/calls: the call is credited to the session that held the number."""

    attributed: Literal[True]
    call_id: str
    to: E164
    from_: Annotated[E164 | None, _CALL_FROM] = msgspec.field(name="from")
    from_raw: Annotated[str, _CALL_FROM_RAW] | UnsetType = UNSET
    pool_id: PoolId
    session_id: SessionId
    visitor_id: VisitorId
    number: Annotated[E164, Meta(description="the number called (the same as `to`)")]
    match: Annotated[Literal["live", "grace"], Meta(description=(
        "live: the session held the number at the call's time; grace: it ended less than "
        "DNI_CALL_GRACE_S before and the number was not leased since"))]
    started_at: EpochMs
    at: Annotated[EpochMs, Meta(description="the call's time (the request's, or now)")]
    attribution: CallAttribution  # type: ignore[valid-type]


class CallUnattributed(_Answer, kw_only=True):
    """POST /v1/calls: no session is credited."""

    attributed: Literal[False]
    reason: Annotated[Literal["no_session", "not_a_pool_number", "backup_number"], Meta(
        description="no_session: a number of the pool that no session covers")]
    call_id: str
    to: E164
    from_: Annotated[E164 | None, _CALL_FROM] = msgspec.field(name="from")
    from_raw: Annotated[str, _CALL_FROM_RAW] | UnsetType = UNSET
    pool_id: Annotated[PoolId, Meta(description=(
        "the pool of the number (or whose backup number it is); absent when no pool "
        "knows it"))] | UnsetType = UNSET
    at: Annotated[EpochMs, Meta(description="the call's time (the request's, or now)")]


class ConsumerGroup(_Answer):
    name: str
    pending: Annotated[Count, Meta(description="delivered and not acknowledged")]
    consumers: Count
    last_delivered_id: str


class StreamInfo(_Answer):
    length: Count
    groups: list[ConsumerGroup]
    dead_letters: Annotated[Count, Meta(description="length of `<stream>:dead`")]


_COUNTER = Meta(ge=0, description="present once counted")


class SidecarCounters(_Answer):
    """The sidecar's counters since the data was created (absent until first counted)."""

    copied: Annotated[int, _COUNTER] | UnsetType = UNSET
    ended_reported: Annotated[int, _COUNTER] | UnsetType = UNSET
    cycles: Annotated[int, _COUNTER] | UnsetType = UNSET
    trimmed: Annotated[int, _COUNTER] | UnsetType = UNSET
    trim_dropped_pending: Annotated[int, Meta(ge=0, description=(
        "entries trimmed before a consumer group had acknowledged them; present once "
        "counted"))] | UnsetType = UNSET


class Streams(_Answer):
    """GET /v1/streams."""

    retention_maxlen: Annotated[int, Meta(ge=1, description="DNI_STREAM_MAXLEN")]
    streams: Annotated[dict[str, StreamInfo], Meta(
        description="by stream key: `<DNI_KEY_PREFIX>:sessions` and `<DNI_KEY_PREFIX>:calls`")]
    sidecar: SidecarCounters


class PoolConfig(_Answer):
    target_number: Annotated[E164 | None, Meta(description="the number to swap")]
    country_code: Annotated[int | None, Meta(
        description="the target number's country calling code (1 for +1...)")]
    heartbeat_s: Annotated[int, Meta(ge=1, description="DNI_HEARTBEAT_S")]


class DniConfig(_Answer):
    """GET /v1/dni/config: what the snippet needs of each pool asked for."""

    pools: Annotated[dict[str, PoolConfig], Meta(
        description="by pool id; pools that do not exist are left out")]


class SnippetInfo(_Answer):
    """GET /v1/dni/snippet: the pinned snippet, for sites that use Subresource Integrity."""

    url: Annotated[str, Meta(description="/snippet.{hash8}.js on this broker")]
    integrity: Annotated[str, Meta(pattern=r"^sha384-[A-Za-z0-9+/]{64}$")]
    tag: Annotated[str, Meta(description="the install tag (replace POOL_ID)")]
    size: Annotated[int, Meta(ge=1, description="bytes")]


STRUCTS = [SessionBody, SessionResponse, HeartbeatRequest, HeartbeatResponse, PoolCreate,
           PoolUpdate, NumbersAdd, CallRequest, Error, Health, Ready, Pool, PoolCreated,
           PoolList, NumbersAdded, NumberActivated, NumberDeactivated, PoolStats, StatsList,
           CallAttributed, CallUnattributed, Streams, DniConfig, SnippetInfo]

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

_POOL_ID = {"type": "string", "pattern": POOL_ID_PATTERN.removesuffix("\\Z") + "$"}
PARAMETERS = {
    "pool_id": {"name": "pool_id", "in": "path", "required": True, "schema": _POOL_ID,
                "description": "A pool id (one that cannot exist is 404 pool_not_found)"},
    "number": {"name": "number", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "A number of the pool, in any common format (URL-encoded)"},
    "hash8": {"name": "hash8", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[0-9a-f]{8}$"},
              "description": "The build's hash, as GET /v1/dni/snippet names it (any other: "
                             "404 not_found)"},
    "pools": {"name": "pools", "in": "query", "required": True, "style": "form",
              "explode": False,
              "schema": {"type": "array", "items": _POOL_ID, "minItems": 1,
                         "maxItems": MAX_POOLS},
              "description": f"1-{MAX_POOLS} pool ids, comma-separated (blanks and repeats "
                             f"are ignored). Left out or empty: 422 missing_field; more than "
                             f"{MAX_POOLS}: 422 too_many_pools; an id not matching the "
                             f"pattern: 422 invalid_pool_id"},
    "target": {"name": "target", "in": "query", "required": False,
               "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                          "default": 0.01},
               "description": "The sizing's target: the probability that a visitor finds no "
                              "free number (else 422 invalid_target)"},
    "pool": {"name": "pool", "in": "query", "required": False, "schema": _POOL_ID,
             "description": "A pool with a target number: the demo page for it (left out: "
                            "a page saying how to make one)"},
    "If-None-Match": {"name": "If-None-Match", "in": "header", "required": False,
                      "schema": {"type": "string"},
                      "description": "ETags of copies held (comma-separated; W/ is "
                                     "ignored), or *: a match is 304 with no body"},
}

_JS = "text/javascript"
_HTML = "text/html"
_TEXT = {"type": "string"}
_DOCUMENT = {"type": "object", "required": ["openapi", "info", "paths", "components"],
             "description": "this document"}


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    answer: Any = None  # the success body: a Struct, a tuple of Structs (one of) or a schema
    ok: str = "200"  # the success status
    request: type | None = None  # the JSON body's Struct
    security: tuple[str, ...] = ()  # schemes of securitySchemes, any one of which will do
    query: tuple[str, ...] = ()
    media: str = "application/json"  # of the answer
    headers: tuple[str, ...] = ()  # components.headers the success answer carries
    errors: bool = True  # may answer 4XX/5XX
    cache: str | None = None  # Cache-Control: answers 304 to a matching If-None-Match


_BEARER = ("bearer",)
_ACAO = ("Access-Control-Allow-Origin",)
_PREFLIGHT = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods",
              "Access-Control-Allow-Headers", "Access-Control-Max-Age")
HEADERS = {name: {"description": f"always {CORS_HEADERS[name.lower()]!r}",
                  "schema": {"type": "string", "const": CORS_HEADERS[name.lower()]}}
           for name in _PREFLIGHT}
HEADERS["ETag"] = {"description": "The body's entity tag: send it back as If-None-Match",
                   "schema": {"type": "string", "pattern": '^"[0-9a-f]{16}"$'}}
HEADERS["Cross-Origin-Resource-Policy"] = {
    "description": "always 'cross-origin': a page with Cross-Origin-Embedder-Policy: "
                   "require-corp may load the script with the plain tag (no crossorigin)",
    "schema": {"type": "string", "const": "cross-origin"}}
_SCRIPT = ("Access-Control-Allow-Origin", "Cross-Origin-Resource-Policy")


OPERATIONS = [
    Op("post", "/v1/dni/session", "Reuse or assign the visitor's tracking number",
       SessionResponse, request=SessionBody, headers=_ACAO),
    Op("options", "/v1/dni/session", "CORS preflight (the snippet sends text/plain, which "
       "needs none; a page sending application/json asks first)", ok="204",
       headers=_PREFLIGHT, errors=False),
    Op("post", "/v1/dni/heartbeat", "Keep a session alive", HeartbeatResponse,
       request=HeartbeatRequest, headers=_ACAO),
    Op("options", "/v1/dni/heartbeat", "CORS preflight (as for /v1/dni/session)", ok="204",
       headers=_PREFLIGHT, errors=False),
    Op("get", "/healthz", "200 while the process is up", Health, headers=_ACAO),
    Op("get", "/readyz", "200 when Redis answers and the scripts are loaded, else 503",
       Ready, headers=_ACAO),
    Op("get", "/snippet.js", "The tracking snippet", _TEXT, media=_JS, headers=_SCRIPT,
       cache=SCRIPT_CACHE),
    Op("get", "/snippet.{hash8}.js", "The snippet pinned to one build (cached for a year; "
       "use with its SRI hash)", _TEXT, media=_JS, headers=_SCRIPT, cache=PINNED_CACHE),
    Op("get", "/v1/dni/config", "Target numbers of pools, for the snippet", DniConfig,
       query=("pools",), headers=_ACAO, cache=CONFIG_CACHE),
    Op("get", "/v1/dni/snippet", "The pinned snippet URL and its SRI hash", SnippetInfo,
       headers=_ACAO),
    Op("get", "/demo", "A demo page running the snippet on a pool", _TEXT, media=_HTML,
       query=("pool",)),
    Op("get", "/openapi.json", "This document", _DOCUMENT, headers=_ACAO),
    Op("post", "/v1/pools", "Create a pool", PoolCreated, "201", PoolCreate, security=_BEARER),
    Op("get", "/v1/pools", "List pools", PoolList, security=_BEARER),
    Op("get", "/v1/stats", "Stats of every pool", StatsList, security=_BEARER,
       query=("target",)),
    Op("get", "/v1/pools/{pool_id}", "Show a pool", Pool, security=_BEARER),
    Op("patch", "/v1/pools/{pool_id}", "Change a pool (fields left out are unchanged; null "
       "clears an optional one)", Pool, request=PoolUpdate, security=_BEARER),
    Op("delete", "/v1/pools/{pool_id}", "Delete a pool, ending its sessions", ok="204",
       security=_BEARER),
    Op("post", "/v1/pools/{pool_id}/numbers", "Add (or buy) numbers", NumbersAdded,
       request=NumbersAdd, security=_BEARER),
    Op("delete", "/v1/pools/{pool_id}/numbers/{number}", "Remove a number; the session "
       "holding it ends", ok="204", security=_BEARER),
    Op("post", "/v1/pools/{pool_id}/numbers/{number}/deactivate", "Never assign a number "
       "again (its session goes on)", NumberDeactivated, security=_BEARER),
    Op("post", "/v1/pools/{pool_id}/numbers/{number}/activate", "Assign a number again",
       NumberActivated, security=_BEARER),
    Op("get", "/v1/pools/{pool_id}/stats", "Numbers, active sessions, utilization, sizing",
       PoolStats, security=_BEARER, query=("target",)),
    Op("post", "/v1/calls", "Attribute a call (JSON with the admin token, or a signed "
       "Twilio webhook form)", (CallAttributed, CallUnattributed), request=CallRequest,
       security=("bearer", "twilio")),
    Op("get", "/v1/streams", "Stream lengths, consumer groups and sidecar counters",
       Streams, security=_BEARER),
]

_TWILIO_FORM = {"type": "object", "required": ["To", "CallSid"], "properties": {
    "To": {"type": "string", "minLength": 1, "description": "the number called"},
    "From": {"type": "string", "description": "the caller id (a number, or \"Anonymous\"...)"},
    "CallSid": {"type": "string", "minLength": 1, "maxLength": 128,
                "description": "the call id (else 422 invalid_call_id)"}},
    "description": "Twilio's voice webhook form (its other fields are accepted and ignored): "
                   "signed with X-Twilio-Signature, or sent with the admin token"}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": (
        "Authorization: Bearer DNI_ADMIN_TOKEN (missing or wrong: 401 unauthorized)")},
    "twilio": {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature", "description": (
        "Twilio's request signature, for the form body of POST /v1/calls when "
        "DNI_TWILIO_AUTH_TOKEN is set: base64 HMAC-SHA1, keyed with that token, of the URL "
        "Twilio called (DNI_PUBLIC_URL with the path and query, else the request's own URL), "
        "then each form field's name and value, sorted by name. Missing or wrong: 403 "
        "bad_signature")},
}


INFO = ("Every 4xx/5xx body is an `Error`. Integer fields of JSON bodies "
        "(session_ttl_s, buy.count, at) must be JSON integers written without a fraction or "
        "exponent: 60.0 and 6e1 are 422, though JSON Schema's `integer` admits 60.0.")


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


def _ref(struct: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{struct.__name__}"}


def _schema(answer: Any) -> dict[str, Any]:
    if isinstance(answer, tuple):
        return {"oneOf": [_ref(s) for s in answer]}
    return answer if isinstance(answer, dict) else _ref(answer)


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        STRUCTS, ref_template="#/components/schemas/{name}")
    components["SessionResponse"]["properties"]["status"]["enum"] = SESSION_STATUSES
    components["HeartbeatResponse"]["properties"]["status"]["enum"] = HEARTBEAT_STATUSES
    components["ErrorDetail"]["properties"]["code"]["description"] = "; ".join(
        f"{status}: {codes}" for status, codes in ERROR_CODES.items())
    error = {"application/json": {"schema": _ref(Error)}}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        success: dict[str, Any] = {"description": "No content" if op.ok == "204" else "OK"}
        if op.answer is not None:
            success["content"] = {op.media: {"schema": _schema(op.answer)}}
        headers: dict[str, Any] = {h: {"$ref": f"#/components/headers/{h}"}
                                   for h in op.headers}
        if op.cache:
            headers["ETag"] = {"$ref": "#/components/headers/ETag"}
            headers["Cache-Control"] = {"description": f"always {op.cache!r}",
                                        "schema": {"type": "string", "const": op.cache}}
        if headers:
            success["headers"] = headers
        doc: dict[str, Any] = {"summary": op.summary, "responses": {op.ok: success}}
        if op.cache:
            doc["responses"]["304"] = {"description": "Not modified: If-None-Match named the "
                                       "current ETag (or *); no body", "headers": headers}
        if op.errors:
            doc["responses"]["4XX"] = {"description": "Rejected (codes: see ErrorDetail.code)",
                                       "content": error}
            doc["responses"]["5XX"] = {"description": "Failed (codes: see ErrorDetail.code)",
                                       "content": error}
        if op.request is not None:
            schema = _ref(op.request)
            content = {"application/json": {"schema": schema}}
            if op.path.startswith("/v1/dni/"):
                content["text/plain"] = {"schema": schema}  # simple CORS requests
            if op.request is CallRequest:
                content["application/x-www-form-urlencoded"] = {"schema": _TWILIO_FORM}
            doc["requestBody"] = {"required": True, "content": content}
        if op.security:
            doc["security"] = [{scheme: []} for scheme in op.security]
        params = [PARAMETERS[name] for name in ("pool_id", "number", "hash8")
                  if "{" + name + "}" in op.path]
        params += [PARAMETERS[name] for name in op.query]
        if op.cache:
            params.append(PARAMETERS["If-None-Match"])
        if params:
            doc["parameters"] = params
        paths.setdefault(op.path, {})[op.method] = doc
    out = {
        "openapi": "3.1.0",
        "info": {"title": "DNI broker", "version": __version__, "description": INFO},
        "paths": paths,
        "components": {"schemas": components, "headers": HEADERS,
                       "securitySchemes": SECURITY_SCHEMES},
    }
    _ecma_patterns(out)
    return out


_doc: bytes | None = None


async def openapi(request: Request) -> Response:
    global _doc
    if _doc is None:
        _doc = dumps(build())
    return json_response(_doc)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
