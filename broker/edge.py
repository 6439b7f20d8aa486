"""The public edge API, called by the tracking snippet from any site (CORS, no auth)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from .engine import PoolNotFound
from .errors import CORS_HEADERS
from .http import Endpoint, header, read_body
from .models import (Attribution, HeartbeatRequest, HeartbeatResponse, SessionRequest,
                     SessionResponse, decode, encoder)
from .source import pack
from .stats import beat_s

MAX_USER_AGENT = 512
# Crawlers and link previewers would hold numbers no caller ever sees: they get `excluded`
# (no Redis work) and the page keeps its own number.
BOT_MARKERS = (b"bot", b"crawl", b"spider", b"slurp", b"lighthouse", b"facebookexternalhit")
EXCLUDED = SessionResponse("excluded", None, None, None, 0)


def is_bot(user_agent: bytes) -> bool:
    ua = user_agent.lower()
    return any(marker in ua for marker in BOT_MARKERS)


def source_of(scope: Scope, body: bytes, ip: str) -> bytes:
    """The session's source: the visitor's IP (`client_ip`, stored as DNI_IP_MODE says),
    user agent and the page's attribution (only the fields given are kept; the landing
    page without its #fragment)."""
    ip = scope["app"].state.ip_policy.apply(ip) if ip else ""
    ua = header(scope, b"user-agent") or b""
    if len(ua) > MAX_USER_AGENT or not ua.isascii():
        # cut on a character, never inside one, and keep the stored source valid UTF-8
        ua = ua.decode("utf-8", "replace")[:MAX_USER_AGENT].encode()
    attribution = decode(body, Attribution)
    page = attribution.landing_page
    if page and "#" in page:  # a fragment can carry tokens (magic links) and is no source
        attribution.landing_page = page.split("#", 1)[0]
    return pack(ip, ua, encoder.encode(attribution))


def client_ip(scope: Scope) -> str:
    """The peer's address, or the forwarded one when the peer is a trusted proxy (the
    server applies DNI_TRUSTED_PROXIES before the app sees the request)."""
    client = scope.get("client")
    return client[0] if client else ""


async def session(scope: Scope, receive: Receive) -> bytes:
    state = scope["app"].state
    ip = client_ip(scope)
    state.limiter.check(ip)
    body = await read_body(scope, receive, state.settings.max_body_bytes)
    req = decode(body, SessionRequest)
    if is_bot(header(scope, b"user-agent") or b""):
        if not await state.engine.pool_exists(req.pool_id):  # unknown pools are 404 for all
            raise PoolNotFound(req.pool_id)
        state.counts.add(req.pool_id, "excluded")
        return encoder.encode(EXCLUDED)
    cap = state.cap
    slot = cap.reserve(req.pool_id, ip) if cap.cap else None  # False: over it, reuse only
    new, length_ms = False, 0
    try:
        res = await state.engine.session(req.pool_id, req.visitor_id,
                                         source_of(scope, body, ip), slot is False)
        new, length_ms = res.status == "new", res.session_length_ms
    finally:
        if slot:
            cap.settle(slot, new, length_ms)
    state.counts.add(req.pool_id, res.status)  # in memory; flushed to Redis by stats.py
    if res.status == "capped":
        return encoder.encode(EXCLUDED)
    if res.session_id is None:  # fallback, unavailable: turned away (counted once)
        state.counts.block(req.pool_id, req.visitor_id)
    return encoder.encode(SessionResponse(res.status, res.number, res.session_id,
                                          res.expires_at, beat_s(state.settings.heartbeat_s,
                                                                 res.session_length_ms)))


async def heartbeat(scope: Scope, receive: Receive) -> bytes:
    state = scope["app"].state
    state.limiter.check(client_ip(scope))
    req = decode(await read_body(scope, receive, state.settings.max_body_bytes), HeartbeatRequest)
    res = await state.engine.heartbeat(req.pool_id, req.visitor_id, req.session_id)
    if res.status == "alive":
        state.counts.add(req.pool_id, "alive")
    return encoder.encode(HeartbeatResponse(res.status, res.number, res.expires_at))


async def preflight(request: Request) -> Response:
    return Response(status_code=204, headers=CORS_HEADERS)


routes = [
    Route("/v1/dni/session", Endpoint(session), methods=["POST"]),
    Route("/v1/dni/heartbeat", Endpoint(heartbeat), methods=["POST"]),
    Route("/v1/dni/session", preflight, methods=["OPTIONS"]),
    Route("/v1/dni/heartbeat", preflight, methods=["OPTIONS"]),
]
