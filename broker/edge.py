"""The public edge API, called by the tracking snippet from any site (CORS, no auth)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import CORS_HEADERS
from .http import json_response, read_body
from .models import (ATTRIBUTION_FIELDS, HeartbeatRequest, HeartbeatResponse,
                     SessionRequest, SessionResponse, decode, encoder)

MAX_USER_AGENT = 512


def attribution_of(req: SessionRequest, request: Request) -> dict[str, str]:
    """The session's source: the request's fields plus the visitor's IP and user agent."""
    out = {}
    for name in ATTRIBUTION_FIELDS:
        value = getattr(req, name)
        if value:
            out[name] = value
    if request.client is not None:
        out["ip"] = request.client.host
    ua = request.headers.get("user-agent")
    if ua:
        out["user_agent"] = ua[:MAX_USER_AGENT]
    return out


async def session(request: Request) -> Response:
    state = request.app.state
    req = decode(await read_body(request, state.settings.max_body_bytes), SessionRequest)
    res = await state.engine.session(req.pool_id, req.visitor_id, attribution_of(req, request))
    body = SessionResponse(res.status, res.number, res.session_id, res.expires_at,
                           state.settings.heartbeat_s)
    return json_response(encoder.encode(body))


async def heartbeat(request: Request) -> Response:
    state = request.app.state
    req = decode(await read_body(request, state.settings.max_body_bytes), HeartbeatRequest)
    res = await state.engine.heartbeat(req.pool_id, req.visitor_id, req.session_id)
    return json_response(encoder.encode(HeartbeatResponse(res.status, res.number, res.expires_at)))


async def preflight(request: Request) -> Response:
    return Response(status_code=204, headers=CORS_HEADERS)


routes = [
    Route("/v1/dni/session", session, methods=["POST"]),
    Route("/v1/dni/session", preflight, methods=["OPTIONS"]),
    Route("/v1/dni/heartbeat", heartbeat, methods=["POST"]),
    Route("/v1/dni/heartbeat", preflight, methods=["OPTIONS"]),
]
