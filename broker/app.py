"""The Starlette application: routes, error mapping and the shared Redis client."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from typing import Any, AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope

from . import admin, calls, edge, openapi, snippet, streams
from .embedded import die_with
from .engine import Engine, PoolNotFound
from .errors import ApiError, error_response
from .http import Endpoint, json_response
from .keys import Keys
from .logs import Throttled
from .pools import Pools
from .providers import providers_from
from .stats import Counts, flush, flusher
from .ratelimit import NewSessionCap, RateLimiter
from .redisconn import TRANSIENT, RedisError, RedisUnavailable, connect
from .scripts import load_scripts
from .settings import Settings
from .sidecar import Sidecar
from .source import IpPolicy

log = logging.getLogger("dni")

_OK = b'{"status":"ok"}'


async def healthz(scope: Scope, receive: Receive) -> bytes:
    """200 while the process is up: the constant-body endpoint the edge is measured against."""
    return _OK


async def bench_constant(request: Request) -> Response:
    """A bare Starlette endpoint returning a constant orjson body: the baseline that issue 2
    names for the edge target (mounted only with DNI_BENCH_ROUTES=1)."""
    return Response(orjson.dumps({"status": "ok"}), media_type="application/json")


async def readyz(request: Request) -> Response:
    state = request.app.state
    scripts = list(state.engine.scripts.values())

    async def check() -> None:
        if not await state.redis.scripts_loaded(scripts):
            # flushed since start-up (or Redis restarted empty): load them again
            await state.redis.load_scripts(scripts)

    try:
        # a Redis that accepts connections but does not answer (stopped, swapping) is
        # not ready either: answer within the retry budget rather than hang
        await asyncio.wait_for(check(), max(state.settings.redis_retry_s, 1.0))
    except asyncio.TimeoutError:
        return error_response(503, "not_ready", "Redis is not answering (timed out)")
    except (RedisUnavailable, RedisError, OSError) as exc:
        # the details (addresses, Redis's own words) go to the log, not to the public
        _outage_log.warn("not ready: %s", exc)
        return error_response(503, "not_ready", "Redis is not answering")
    return json_response(b'{"status":"ready"}')


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _pool_not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "pool_not_found", str(exc))


_outage_log = Throttled(log)
# error replies of a Redis that cannot serve now: those the client waits out (still
# after its retry budget), a replica, a wrong password...
_NOT_SERVING = TRANSIENT + ("READONLY", "NOAUTH", "WRONGPASS", "NOPERM", "MISCONF", "BUSY")


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    _outage_log.warn("redis unavailable: %s", exc)
    return error_response(503, "redis_unavailable", "the session store is not reachable")


async def _redis_error(request: Request, exc: Exception) -> Response:
    """Redis answered an error: out of memory (writes refused until memory is freed) or
    not serving are 503s, logged once in a while; anything else is a bug (500)."""
    text = str(exc)
    if text.startswith("OOM"):
        _outage_log.warn("redis is out of memory (maxmemory): %s", text)
        return error_response(503, "redis_full", "the session store is full; try again later")
    if text.startswith(_NOT_SERVING):
        _outage_log.warn("redis is not serving: %s", text)
        return error_response(503, "redis_unavailable", "the session store is not serving")
    log.error("redis error on %s %s: %s", request.method, request.url.path, text)
    return error_response(500, "internal", "the broker failed to answer; it has been logged")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    headers = exc.headers
    if exc.status_code == 405:  # Allow: the methods of every route of this path
        headers = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
        headers["allow"] = ", ".join(_allowed(request))
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"),
                          str(exc.detail), headers=headers)


def _allowed(request: Request) -> list[str]:
    """Starlette names only the first route matching the path; a path served by several
    routes (one per method) allows all of theirs."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return sorted(methods)


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "the broker failed to answer; it has been logged")


async def _warn_if_evicting(redis: Any) -> None:
    """A Redis that evicts keys drops pools, numbers and sessions without a word: say so
    at start-up (the embedded Redis and the compose file run `noeviction`)."""
    try:
        info = await redis.execute("INFO", "memory")
    except (RedisUnavailable, RedisError, OSError) as exc:  # an ACL user without INFO
        log.warning("could not check Redis's maxmemory-policy (%s): it must be noeviction",
                    exc)
        return
    text = info.decode() if isinstance(info, bytes) else ""  # a cluster: one dict per node
    for line in text.splitlines():
        if line.startswith("maxmemory_policy:"):
            policy = line.split(":", 1)[1].strip()
            if policy != "noeviction":
                log.warning("Redis's maxmemory-policy is %s: at its maxmemory it will delete "
                            "pools, numbers and sessions; set maxmemory-policy noeviction",
                            policy)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise SystemExit("DNI_REDIS_URL is not set (dni serve starts an embedded Redis)")
    if settings.twilio_auth_token and not settings.public_url:
        log.warning("DNI_TWILIO_AUTH_TOKEN is set without DNI_PUBLIC_URL: webhook signatures "
                    "are checked against a URL built from the request's Host header")
    supervisor = os.environ.get("DNI_SUPERVISOR_PID")
    if supervisor:  # a worker of `dni serve --workers N`: it goes when its supervisor goes
        die_with(int(supervisor))
        # A closed terminal hangs up the whole group: the supervisor stops the workers in
        # order (SIGTERM), which SIGHUP's default action would cut short.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect(settings.redis_url, settings.redis_cluster, settings.redis_retry_s,
                        settings.redis_cluster_nodes)
        scripts = load_scripts()
        engine = Engine(redis, Keys(settings.key_prefix), scripts, settings.call_grace_s * 1000)
        app.state.settings = settings
        app.state.redis = redis
        app.state.engine = engine
        app.state.ip_policy = IpPolicy(settings.ip_mode, settings.ip_hash_key)
        app.state.limiter = RateLimiter(settings.rate_limit_per_min)
        app.state.cap = NewSessionCap(settings.new_sessions_per_ip)
        app.state.pools = Pools(engine, settings.default_region,
                                settings.default_session_ttl_s, settings.heartbeat_s,
                                providers_from(settings, redis, engine.keys))
        app.state.counts = counts = Counts()  # answer counts, flushed to Redis (stats.py)
        try:
            await redis.load_scripts(list(scripts.values()))
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.warning("Redis not reachable at start-up (%s); /readyz will say 503", exc)
        else:
            await _warn_if_evicting(redis)
        # Everything built so far lives as long as the process: keep it out of the cyclic
        # GC's work, and collect the young generation less often. Requests allocate many
        # short-lived containers, and gen-0 collections were ~13% of a loaded worker's CPU.
        sidecar_task = None
        if settings.sidecar:
            sidecar = Sidecar(redis, engine.keys, scripts, settings.stream_maxlen,
                              settings.sidecar_interval_ms / 1000)
            sidecar_task = asyncio.create_task(sidecar.run())
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        flushing = asyncio.create_task(flusher(counts, engine, settings.stats_flush_ms / 1000))
        try:
            yield
        finally:
            flushing.cancel()
            with contextlib.suppress(Exception):
                await flush(counts, engine)
            if sidecar_task is not None:
                sidecar.stop()
                await sidecar_task
            await redis.close()

    # The edge routes come first: the router tries routes in order.
    routes = [*edge.routes, Route("/healthz", Endpoint(healthz), methods=["GET", "HEAD"]),
              Route("/readyz", readyz), *admin.routes, *calls.routes, *streams.routes,
              *snippet.routes, *openapi.routes]
    if settings.bench_routes:
        # First, like the edge routes: the router tries routes in order, and a baseline
        # matched after every other route would be slowed by the failed matches
        routes.insert(0, Route("/bench/constant", bench_constant))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            PoolNotFound: _pool_not_found,
            RedisUnavailable: _redis_unavailable,
            RedisError: _redis_error,
            HTTPException: _http_error,
            Exception: _internal,
        },
    )
    # A path with a trailing slash is 404 in the error shape, not a 307 redirect (which a
    # browser's cross-origin POST would not follow with its body).
    app.router.redirect_slashes = False
    return app
