"""The admin API: pools, their numbers and stats, behind `Authorization: Bearer`."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import ApiError
from .http import dumps, json_response, read_body
from .models import POOL_ID_RE, NumbersAdd, PoolCreate, decode


def authorized(request: Request) -> bool:
    """Whether the request carries the admin bearer token (compared in constant time)."""
    token = request.app.state.settings.admin_token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode())


def _authorize(request: Request) -> None:
    if not request.app.state.settings.admin_token:
        raise ApiError(401, "unauthorized", "the admin API is off: DNI_ADMIN_TOKEN is not set")
    if not authorized(request):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")


def _pool_id(request: Request) -> str:
    pool_id = request.path_params["pool_id"]
    if not POOL_ID_RE.match(pool_id):  # could never have been created: no key is built
        raise ApiError(404, "pool_not_found", f"pool {pool_id!r} does not exist")
    return pool_id


async def create_pool(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    req = decode(await read_body(request.scope, request.receive, state.settings.max_admin_body_bytes), PoolCreate)
    return json_response(dumps(await state.pools.create(req)), 201, cors=False)


async def list_pools(request: Request) -> Response:
    _authorize(request)
    return json_response(dumps({"pools": await request.app.state.pools.list()}), cors=False)


async def get_pool(request: Request) -> Response:
    _authorize(request)
    return json_response(dumps(await request.app.state.pools.get(_pool_id(request))), cors=False)


async def add_numbers(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    pool_id = _pool_id(request)
    req = decode(await read_body(request.scope, request.receive, state.settings.max_admin_body_bytes), NumbersAdd)
    return json_response(dumps(await state.pools.add_numbers(pool_id, req.numbers)), cors=False)


async def pool_stats(request: Request) -> Response:
    _authorize(request)
    pool_id = _pool_id(request)
    s = await request.app.state.engine.stats(pool_id)
    body = {"pool_id": pool_id, "numbers": s.numbers, "active_sessions": s.active_sessions,
            "available": s.numbers - s.active_sessions, "utilization": round(s.utilization, 4),
            "at": s.now_ms}
    return json_response(dumps(body), cors=False)


routes = [
    Route("/v1/pools", create_pool, methods=["POST"]),
    Route("/v1/pools", list_pools, methods=["GET"]),
    Route("/v1/pools/{pool_id}", get_pool, methods=["GET"]),
    Route("/v1/pools/{pool_id}/numbers", add_numbers, methods=["POST"]),
    Route("/v1/pools/{pool_id}/stats", pool_stats, methods=["GET"]),
]
