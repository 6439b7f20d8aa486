"""The naive baseline: read the free numbers, choose one in Python, write it back.

This is how much open-source call-tracking code assigns numbers (a SELECT of free numbers
then an UPDATE, or the same against Redis): each step is one round trip, nothing holds
the numbers between the read and the write, so two visitors arriving together can both
choose the same number. It works on the broker's own keys and data model (the pool's
sorted set scored by free-from time, the visitor record, the holders hash, the outbox), so
it runs against the same Redis, side by side with the Lua engine.
"""

from __future__ import annotations

import random
from typing import Any

from broker.engine import _entropy
from broker.keys import Keys


class NaiveEngine:
    def __init__(self, redis: Any, keys: Keys, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms

    async def session(self, pool_id: str, visitor_id: str) -> tuple:
        """(status, session_id, number, expires_at), as the session script answers."""
        r, k = self.redis.execute, self.keys
        visitor_key = k.visitor(pool_id, visitor_id)
        sec, usec = await r("TIME")
        now = int(sec) * 1000 + int(usec) // 1000
        expires_at = now + self.ttl_ms
        sid, n, started, beats = await r("HMGET", visitor_key, "s", "n", "t", "h")
        if sid:  # reuse
            await r("PEXPIREAT", visitor_key, expires_at - 1)
            await r("HSET", k.holders(pool_id), n,
                    b"|".join([sid, visitor_id.encode(), started, b"%d" % expires_at, beats]))
            return "reused", sid.decode(), n.decode(), expires_at
        # read ... choose ... write: the race is between these awaits
        free = await r("ZRANGEBYSCORE", k.numbers(pool_id), "-inf", now, "LIMIT", 0, 100)
        if not free:
            return "fallback", None, None, None
        number = random.choice(free)
        new_sid, _ = _entropy.take()
        await r("ZADD", k.numbers(pool_id), "XX", expires_at, number)
        await r("HSET", visitor_key, "s", new_sid, "n", number, "t", now, "h", 0)
        await r("PEXPIREAT", visitor_key, expires_at - 1)
        num = number.decode()
        await r("HSET", k.holders(pool_id), number, f"{new_sid}|{visitor_id}|{now}|{expires_at}|0",
                "a:" + num, '127.0.0.1\ndni-bench\n{"utm_source":"google"}')
        await r("XADD", k.outbox(pool_id), "*", "event", "session.started", "pool_id", pool_id,
                "session_id", new_sid, "visitor_id", visitor_id, "number", number)
        return "new", new_sid, number.decode(), expires_at


def double_assignments(leases: list[tuple], ttl_ms: int) -> int:
    """Leases (number, visitor, expires_at) that overlap an earlier lease of the same number
    held by another visitor: each is a number given to two live sessions at once."""
    by_number: dict[str, list[tuple[int, int, str]]] = {}
    for number, visitor, exp in leases:
        if number is None or exp is None:
            continue
        by_number.setdefault(number, []).append((exp - ttl_ms, exp, visitor))
    doubles = 0
    for spans in by_number.values():
        spans.sort()
        held_until, holder = -1, None
        for start, end, visitor in spans:
            if start < held_until and visitor != holder:
                doubles += 1
            if end > held_until:
                held_until, holder = end, visitor
    return doubles
