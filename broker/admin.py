"""The admin API: pools, their numbers and stats, behind `Authorization: Bearer`."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .engine import PoolNotFound
from .errors import ApiError
from .http import dumps, json_response, read_body
from .models import POOL_ID_RE, NumbersAdd, PoolCreate, PoolUpdate, decode
from .stats import pool_stats as compute_stats


BEARER = {"www-authenticate": 'Bearer realm="dni"'}  # what a 401 asks for (RFC 9110)


def authorized(request: Request) -> bool:
    """Whether the request carries the admin bearer token (compared in constant time)."""
    token = request.app.state.settings.admin_token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode())


def _authorize(request: Request) -> None:
    if not request.app.state.settings.admin_token:
        raise ApiError(401, "unauthorized", "the admin API is off: DNI_ADMIN_TOKEN is not set",
                       BEARER)
    if not authorized(request):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", BEARER)


def _pool_id(request: Request) -> str:
    pool_id = request.path_params["pool_id"]
    if not POOL_ID_RE.match(pool_id):  # could never have been created: no key is built
        raise ApiError(404, "pool_not_found", f"pool {pool_id!r} does not exist")
    return pool_id


async def create_pool(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    req = await _body(request, PoolCreate)
    return json_response(dumps(await state.pools.create(req)), 201, cors=False)


async def list_pools(request: Request) -> Response:
    _authorize(request)
    return json_response(dumps({"pools": await request.app.state.pools.list()}), cors=False)


async def get_pool(request: Request) -> Response:
    _authorize(request)
    return json_response(dumps(await request.app.state.pools.get(_pool_id(request))), cors=False)


async def _body(request: Request, cls: type) -> object:
    limit = request.app.state.settings.max_admin_body_bytes
    return decode(await read_body(request.scope, request.receive, limit), cls)


async def update_pool(request: Request) -> Response:
    _authorize(request)
    pool_id = _pool_id(request)
    req = await _body(request, PoolUpdate)
    return json_response(dumps(await request.app.state.pools.update(pool_id, req)), cors=False)


async def delete_pool(request: Request) -> Response:
    _authorize(request)
    await request.app.state.pools.delete(_pool_id(request))
    return Response(status_code=204)


async def add_numbers(request: Request) -> Response:
    _authorize(request)
    pool_id = _pool_id(request)
    req = await _body(request, NumbersAdd)
    return json_response(dumps(await request.app.state.pools.add_numbers(pool_id, req)), cors=False)


async def remove_number(request: Request) -> Response:
    _authorize(request)
    pool_id = _pool_id(request)
    await request.app.state.pools.remove_number(pool_id, request.path_params["number"])
    return Response(status_code=204)


async def deactivate_number(request: Request) -> Response:
    _authorize(request)
    out = await request.app.state.pools.set_active(
        _pool_id(request), request.path_params["number"], False)
    return json_response(dumps(out), cors=False)


async def activate_number(request: Request) -> Response:
    _authorize(request)
    out = await request.app.state.pools.set_active(
        _pool_id(request), request.path_params["number"], True)
    return json_response(dumps(out), cors=False)


def _target(request: Request) -> float:
    raw = request.query_params.get("target", "0.01")
    try:
        target = float(raw)
    except ValueError:
        target = -1.0
    if not 0 < target < 1:
        raise ApiError(422, "invalid_target", f"target={raw!r}: a probability in (0, 1)")
    return target


async def pool_stats(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    body = await compute_stats(state.engine, _pool_id(request), state.settings.heartbeat_s,
                               _target(request))
    return json_response(dumps(body), cors=False)


async def all_stats(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    target = _target(request)
    ids = sorted(i.decode() for i in await state.redis.execute(
        "SMEMBERS", state.engine.keys.pool_index()))
    pools = []
    for pool_id in ids:
        try:
            pools.append(await compute_stats(state.engine, pool_id,
                                             state.settings.heartbeat_s, target))
        except PoolNotFound:
            continue
    return json_response(dumps({"pools": pools}), cors=False)


routes = [
    Route("/v1/pools", create_pool, methods=["POST"]),
    Route("/v1/pools", list_pools, methods=["GET"]),
    Route("/v1/stats", all_stats, methods=["GET"]),
    Route("/v1/pools/{pool_id}", get_pool, methods=["GET"]),
    Route("/v1/pools/{pool_id}", update_pool, methods=["PATCH"]),
    Route("/v1/pools/{pool_id}", delete_pool, methods=["DELETE"]),
    Route("/v1/pools/{pool_id}/numbers", add_numbers, methods=["POST"]),
    Route("/v1/pools/{pool_id}/numbers/{number}", remove_number, methods=["DELETE"]),
    Route("/v1/pools/{pool_id}/numbers/{number}/deactivate", deactivate_number,
          methods=["POST"]),
    Route("/v1/pools/{pool_id}/numbers/{number}/activate", activate_number, methods=["POST"]),
    Route("/v1/pools/{pool_id}/stats", pool_stats, methods=["GET"]),
]
