"""The Python face of the Lua scripts: one method per atomic operation.

Expected outcomes come back from the scripts as status strings and are mapped here, in
one place, to results or to exceptions (PoolNotFound).
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from typing import Any

from .keys import Keys
from .scripts import Script, load_scripts

_rand = random.SystemRandom()  # assignment must not be predictable from outside


class PoolNotFound(LookupError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"pool {pool_id!r} does not exist")
        self.pool_id = pool_id


def _s(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class SessionResult:
    status: str  # new | reused | fallback | unavailable
    number: str | None
    session_id: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    status: str  # alive | expired
    number: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class PoolStats:
    numbers: int
    active_sessions: int
    now_ms: int

    @property
    def utilization(self) -> float:
        return self.active_sessions / self.numbers if self.numbers else 0.0


class Engine:
    """Runs the scripts against `redis` (anything with `evalsha(script, keys, args)`)."""

    def __init__(self, redis: Any, keys: Keys, scripts: dict[str, Script] | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts or load_scripts()

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[name]
        script.check(keys)
        return await self.redis.evalsha(script, keys, args)

    async def session(self, pool_id: str, visitor_id: str,
                      attribution: dict[str, str] | None = None) -> SessionResult:
        k = self.keys
        args: list[Any] = [secrets.token_urlsafe(12), _rand.getrandbits(31), visitor_id, pool_id]
        if attribution:
            for name, value in attribution.items():
                args += (name, value)
        keys = [k.pool(pool_id), k.numbers(pool_id), k.holders(pool_id),
                k.visitor(pool_id, visitor_id), k.outbox(pool_id)]
        status, number, sid, expires_at = await self._run("session", keys, args)
        status = _s(status)
        if status == "no_pool":
            raise PoolNotFound(pool_id)
        return SessionResult(status, _s(number) or None, _s(sid) or None, expires_at or None)

    async def heartbeat(self, pool_id: str, visitor_id: str, session_id: str) -> HeartbeatResult:
        k = self.keys
        keys = [k.pool(pool_id), k.numbers(pool_id), k.holders(pool_id),
                k.visitor(pool_id, visitor_id)]
        status, number, expires_at = await self._run("heartbeat", keys, [session_id, visitor_id])
        status = _s(status)
        if status == "no_pool":
            raise PoolNotFound(pool_id)
        return HeartbeatResult(status, _s(number) or None, expires_at or None)

    async def add_numbers(self, pool_id: str, numbers: list[str]) -> int:
        k = self.keys
        added = await self._run("add_numbers", [k.pool(pool_id), k.numbers(pool_id)], numbers)
        if added < 0:
            raise PoolNotFound(pool_id)
        return added

    async def stats(self, pool_id: str) -> PoolStats:
        k = self.keys
        total, held, now = await self._run("pool_stats", [k.pool(pool_id), k.numbers(pool_id)], [])
        if total < 0:
            raise PoolNotFound(pool_id)
        return PoolStats(total, held, now)
