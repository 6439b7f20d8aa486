"""GET /v1/streams (admin): the consumer-facing streams and the sidecar's counters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .admin import _authorize
from .http import dumps, json_response
from .redisconn import RedisError


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def streams(request: Request) -> Response:
    _authorize(request)
    state = request.app.state
    keys = state.engine.keys
    out: dict[str, Any] = {"retention_maxlen": state.settings.stream_maxlen, "streams": {}}
    for stream in (keys.sessions_stream(), keys.calls_stream()):
        info: dict[str, Any] = {"length": await state.redis.execute("XLEN", stream),
                                "groups": []}
        try:
            groups = await state.redis.execute("XINFO", "GROUPS", stream)
        except RedisError:  # the stream does not exist yet
            groups = []
        except Exception:  # noqa: BLE001 - the cluster client raises its own error type
            groups = []
        for group in groups:
            g = {_s(group[i]): group[i + 1] for i in range(0, len(group), 2)}
            info["groups"].append({"name": _s(g["name"]), "pending": g["pending"],
                                   "consumers": g["consumers"],
                                   "last_delivered_id": _s(g["last-delivered-id"])})
        info["dead_letters"] = await state.redis.execute("XLEN", keys.dead_letters(stream))
        out["streams"][stream] = info
    raw = await state.redis.execute("HGETALL", keys.sidecar_stats())
    out["sidecar"] = {_s(raw[i]): int(raw[i + 1]) for i in range(0, len(raw), 2)}
    return json_response(dumps(out), cors=False)


routes = [Route("/v1/streams", streams, methods=["GET"])]
