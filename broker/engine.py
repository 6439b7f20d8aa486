"""The Python face of the Lua scripts: one method per atomic operation.

Expected outcomes come back from the scripts as status strings and are mapped here, in
one place, to results or to exceptions (PoolNotFound).
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from typing import Any, Iterable

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


# Scripts that must not be sent again when the connection drops with them in flight (they
# may have run): counts in the number index, and steps whose second run answers otherwise.
_RUN_ONCE = frozenset({"fix_numbers", "create_pool", "remove_number", "delete_pool"})


class PoolNotFound(LookupError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"pool {pool_id!r} does not exist")
        self.pool_id = pool_id


class NumberNotInPool(LookupError):
    def __init__(self, pool_id: str, number: str) -> None:
        super().__init__(f"{number} is not a number of pool {pool_id!r}")
        self.pool_id = pool_id
        self.number = number


class NumberInUse(ValueError):
    """A tracking number of another pool, or a pool's target/backup number (owner "")."""

    def __init__(self, number: str, owner: str) -> None:
        where = f"a tracking number of pool {owner!r}" if owner else \
            "a pool's target or backup number"
        super().__init__(f"{number} is already {where}")
        self.number = number
        self.owner = owner


class Contention(RuntimeError):
    """A lease kept changing under a number operation (never seen in practice)."""


_RETRIES = 20


def _s(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class SessionResult:
    status: str  # new | reused | fallback | unavailable | capped
    number: str | None
    session_id: str | None
    expires_at: int | None
    session_length_ms: int = 0  # the pool's


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    status: str  # alive | expired
    number: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class PoolStats:
    numbers: int  # active numbers
    active_sessions: int  # live sessions, those on deactivated numbers included
    now_ms: int
    on_active_numbers: int = 0  # live sessions holding active numbers

    @property
    def utilization(self) -> float:
        return self.active_sessions / self.numbers if self.numbers else 0.0


class Engine:
    """Runs the scripts against `redis` (anything with `evalsha(script, keys, args)`)."""

    def __init__(self, redis: Any, keys: Keys, scripts: dict[str, Script] | None = None,
                 grace_ms: int = 0) -> None:
        self.redis = redis
        self.keys = keys
        # a number freed less than this ago waits while others are free (session-5.lua):
        # the broker's call grace period (DNI_CALL_GRACE_S)
        self.grace_ms = grace_ms
        # names this process's answer-count flushes (one marker key per pool and process)
        self.process_id = _entropy.take()[0]
        self.scripts = scripts or load_scripts()
        self._session = self.scripts["session"]
        self._session.check(self.keys.session_keys("p", "v"))

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self.scripts[name]
        script.check(keys)
        return await self.redis.evalsha(script, keys, args, name not in _RUN_ONCE)

    async def session(self, pool_id: str, visitor_id: str, source: bytes = b"\n\n{}",
                      reuse_only: bool = False) -> SessionResult:
        """Reuse or assign a number. `source` is b"ip\nuser_agent\nattribution JSON".
        `reuse_only`: a visitor without a live session is answered "capped"."""
        sid, pick = _entropy.take()
        args = [sid, pick, visitor_id, pool_id, source]
        args.append(self.grace_ms)
        if reuse_only:
            args.append("reuse")
        out = await self.redis.evalsha(
            self._session, self.keys.session_keys(pool_id, visitor_id), args)
        status = _s(out[0])
        if status == "no_pool":
            raise PoolNotFound(pool_id)
        return SessionResult(status, _s(out[1]) or None, _s(out[2]) or None, out[3] or None,
                             out[4])

    async def heartbeat(self, pool_id: str, visitor_id: str, session_id: str) -> HeartbeatResult:
        keys = self.keys.heartbeat_keys(pool_id, visitor_id)
        status, number, expires_at = await self._run("heartbeat", keys,
                                                     [session_id, visitor_id])
        status = _s(status)
        if status == "no_pool":
            raise PoolNotFound(pool_id)
        return HeartbeatResult(status, _s(number) or None, expires_at or None)

    async def create_pool(self, pool_id: str, fields: list[str], numbers: list[str]) -> bool:
        """The pool's settings (field, value pairs) and first numbers; False if it exists."""
        k = self.keys
        return bool(await self._run("create_pool", [k.pool(pool_id), k.numbers(pool_id)],
                                    [len(fields) // 2, *fields, *numbers]))

    async def add_numbers(self, pool_id: str, numbers: list[str]) -> int:
        k = self.keys
        added = await self._run("add_numbers", [k.pool(pool_id), k.numbers(pool_id),
                                               k.inactive(pool_id)], numbers)
        if added < 0:
            raise PoolNotFound(pool_id)
        return added

    async def pool_exists(self, pool_id: str) -> bool:
        return bool(await self.redis.read("EXISTS", self.keys.pool(pool_id)))

    async def end_sessions(self, pool_id: str, batch: int = 64) -> int:
        """Walk the numbers whose score passed (end_sessions-5.lua): report the leases
        that ended, move the refreshed ones to their real end. Returns how many ended."""
        k = self.keys
        keys = [k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
                k.outbox(pool_id)]
        total = 0
        while True:
            reported, more = await self._run("end_sessions", keys, [pool_id, batch])
            total += reported
            if not more:
                return total
            await asyncio.sleep(0)  # let requests in between batches

    async def stats(self, pool_id: str) -> PoolStats:
        """Numbers and live sessions. The walk first brings every score up to date, so
        that sessions refreshed past their first score count as held (exact, not within
        one sidecar interval)."""
        k = self.keys
        await self.end_sessions(pool_id, 500)
        total, held, now, on_active = await self._run(
            "pool_stats", [k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id)], [])
        if total < 0:
            raise PoolNotFound(pool_id)
        return PoolStats(total, held, now, on_active)

    async def pool_counts(self, pool_id: str, now_min: int, fields: tuple[str, ...],
                          span: int) -> list[Any]:
        """A pool's counts of the last day in one call (pool_counts-1500.lua): the 60
        newest minute buckets, the sums of the others, the turned-away visitors."""
        k = self.keys
        keys = [k.minute(pool_id, now_min - i) for i in range(1440)]
        keys += [k.blocked(pool_id, now_min - i) for i in range(60)]
        return await self._run("pool_counts", keys, [*fields, span])

    # -- numbers of a pool ------------------------------------------------------------
    # remove/activate re-check the holder lease the caller read; -2 means it changed.

    async def _with_holder(self, name: str, pool_id: str, number: str,
                           keys: list[str]) -> int:
        k = self.keys
        for _ in range(_RETRIES):
            lease = _s(await self.redis.execute("HGET", k.holders(pool_id), number)) or ""
            parts = lease.split("|")
            visitor = parts[1] if len(parts) >= 3 else ""
            code = await self._run(name, [*keys, k.visitor(pool_id, visitor)],
                                   [number, lease, pool_id])
            if code == -1:
                raise PoolNotFound(pool_id)
            if code == 0:
                raise NumberNotInPool(pool_id, number)
            if code != -2:
                return code
        raise Contention(f"the lease of {number} kept changing")

    async def remove_number(self, pool_id: str, number: str) -> None:
        """Take a number out of the pool; the session holding it ends at once."""
        k = self.keys
        await self._with_holder("remove_number", pool_id, number, [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.flows(pool_id), k.outbox(pool_id)])

    async def activate_number(self, pool_id: str, number: str) -> bool:
        """True if it was inactive (now active), False if it was active already."""
        k = self.keys
        code = await self._with_holder("activate_number", pool_id, number, [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.outbox(pool_id)])
        return code == 1

    async def deactivate_number(self, pool_id: str, number: str) -> bool:
        """True if it was active (now inactive), False if it was inactive already."""
        k = self.keys
        code = await self._run("deactivate_number", [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.outbox(pool_id)], [number, pool_id])
        if code == -1:
            raise PoolNotFound(pool_id)
        if code == 0:
            raise NumberNotInPool(pool_id, number)
        return code == 1

    # -- pools --------------------------------------------------------------------------

    async def update_pool(self, pool_id: str, fields: dict[str, str]) -> None:
        flat = [x for pair in fields.items() for x in pair]
        if not await self._run("update_pool", [self.keys.pool(pool_id)], flat):
            raise PoolNotFound(pool_id)

    async def delete_pool(self, pool_id: str) -> bool:
        """Delete the pool's settings once it has no numbers; False if numbers remain."""
        k = self.keys
        code = await self._run("delete_pool", [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.flows(pool_id)], [])
        if code == -1:
            raise PoolNotFound(pool_id)
        return code == 1

    # -- the global number index ----------------------------------------------------------

    async def claim_numbers(self, pool_id: str, numbers: list[str]) -> None:
        """Claim tracking numbers for a pool, all or none; NumberInUse otherwise."""
        if not numbers:
            return
        k = self.keys
        out = await self._run("claim_numbers", [k.number_index(), k.fixed_index()],
                              [pool_id, *numbers])
        if out[0] != 1:
            raise NumberInUse(_s(out[1]), _s(out[2]))

    async def release_numbers(self, pool_id: str, numbers: list[str]) -> int:
        if not numbers:
            return 0
        return await self._run("release_numbers", [self.keys.number_index()],
                               [pool_id, *numbers])

    async def fix_numbers(self, add: list[str], drop: list[str]) -> None:
        """Count target/backup numbers in the index; NumberInUse if one is tracking."""
        if not add and not drop:
            return
        k = self.keys
        out = await self._run("fix_numbers", [k.number_index(), k.fixed_index()],
                              [len(add), *add, *drop])
        if out[0] != 1:
            raise NumberInUse(_s(out[1]), _s(out[2]))

    # -- counts -------------------------------------------------------------------------

    async def record_counts(self, pool_id: str, minute: int, counts: dict[str, int],
                            bucket_ttl_s: int, threshold_pct: int, window_ms: int,
                            blocked: Iterable[str] = ()) -> tuple[int, int, bool]:
        """Add counts (and the visitors answered fallback/unavailable) to a minute's
        buckets; (held, numbers, pressure started)."""
        k = self.keys
        flat = [x for pair in counts.items() for x in pair]
        flush_id, _ = _entropy.take()  # one per call: a resent call is recognised
        held, total, started = await self._run(
            "record_counts", [k.pool(pool_id), k.numbers(pool_id), k.minute(pool_id, minute),
                              k.flush_marker(pool_id, self.process_id),
                              k.blocked(pool_id, minute)],
            [bucket_ttl_s, threshold_pct, window_ms, flush_id, len(counts), *flat, *blocked])
        return held, total, bool(started)
