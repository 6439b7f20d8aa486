"""The Python face of the Lua scripts: one method per atomic operation.

Expected outcomes come back from the scripts as status strings and are mapped here, in
one place, to results or to exceptions (PoolNotFound).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from .keys import Keys
from .scripts import Script, load_scripts

class _Entropy:
    """Unpredictable session ids and picks, from os.urandom read 4 KiB at a time.

    One getrandom() call per request was a measurable share of the edge's CPU time.
    """

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def take(self) -> tuple[str, int]:
        """A 16-character url-safe session id (96 bits) and an integer in [0, 2^31)."""
        pos = self.pos
        if pos + 16 > len(self.buf):
            self.buf, pos = os.urandom(4096), 0
        self.pos = pos + 16
        chunk = self.buf[pos:pos + 16]
        sid = base64.urlsafe_b64encode(chunk[:12]).decode()
        return sid, int.from_bytes(chunk[12:], "big") & 0x7FFFFFFF


_entropy = _Entropy()


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
        self._session = self.scripts["session"]
        self._session.check(self.keys.session_keys("p", "v"))

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[name]
        script.check(keys)
        return await self.redis.evalsha(script, keys, args)

    async def session(self, pool_id: str, visitor_id: str, source: bytes = b"\n\n{}"
                      ) -> SessionResult:
        """Reuse or assign a number. `source` is b"ip\nuser_agent\nattribution JSON"."""
        sid, pick = _entropy.take()
        args = [sid, pick, visitor_id, pool_id, source]
        status, number, sid, expires_at = await self.redis.evalsha(
            self._session, self.keys.session_keys(pool_id, visitor_id), args)
        status = _s(status)
        if status == "no_pool":
            raise PoolNotFound(pool_id)
        return SessionResult(status, _s(number) or None, _s(sid) or None, expires_at or None)

    async def heartbeat(self, pool_id: str, visitor_id: str, session_id: str) -> HeartbeatResult:
        keys = self.keys.heartbeat_keys(pool_id, visitor_id)
        status, number, expires_at = await self._run("heartbeat", keys, [session_id])
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
