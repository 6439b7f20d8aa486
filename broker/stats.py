"""Answer counts, pool pressure and sizing.

Counting stays out of the session script (the edge's hot path): each broker process
counts its answers in a small in-memory dict (pool -> status -> count), and a background
task flushes it about once a second (`DNI_STATS_FLUSH_MS`) into per-minute hashes
`dni:{P}:m:{minute}` with record_counts-5.lua (HINCRBY, kept 25 hours; a flush resent
after a dropped connection is added once). The dict only
ever holds the pools that had traffic since the last flush, so memory is bounded by the
number of pools. Counts of a process that dies are lost for at most one flush interval.

Sizing is Erlang B: visitors arrive at rate lambda (new sessions plus distinct visitors
answered fallback or unavailable, per second, in the busiest 15 minutes of the last hour)
and hold a number for the holding time: the mean length of the leases that ended in the
last hour, from start to end (each page view and heartbeat refreshes a lease; the sidecar
adds the `session.ended` durations it copies to the minute buckets), or, before any lease
has ended, the visit length the heartbeats tell plus one session length. The recommended
size is the smallest pool whose blocking probability B(N, A), A = lambda * holding time,
is at most the target (default 1%).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .engine import Engine
from .logs import Throttled

log = logging.getLogger("dni.stats")

STATUSES = ("new", "reused", "fallback", "unavailable")
FIELDS = (*STATUSES, "alive")  # alive: heartbeats answered alive (for the visit length)
# what the sidecar adds to the buckets: leases ended in the minute, and their total length
ENDED_FIELDS = ("ended", "held_ms")
BUCKET_TTL_S = 25 * 3600
PRESSURE_PCT = 80
HOUR_MS = 3_600_000
BUSY_MINUTES = 15  # the sizing's arrival rate is that of the busiest such span of the hour


class Counts:
    """In-memory answer counts of this process since the last flush, and the visitors it
    answered fallback or unavailable (bounded by the distinct ones within one flush)."""

    __slots__ = ("cur", "blocked")

    def __init__(self) -> None:
        self.cur: dict[str, dict[str, int]] = {}
        self.blocked: dict[str, set[str]] = {}

    def add(self, pool_id: str, status: str) -> None:
        c = self.cur.get(pool_id)
        if c is None:
            c = self.cur[pool_id] = {}
        c[status] = c.get(status, 0) + 1

    def block(self, pool_id: str, visitor_id: str) -> None:
        self.blocked.setdefault(pool_id, set()).add(visitor_id)

    def take(self) -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
        cur, self.cur = self.cur, {}
        blocked, self.blocked = self.blocked, {}
        return cur, blocked


async def flush(counts: Counts, engine: Engine) -> None:
    taken, blocked = counts.take()
    if not taken:
        return
    minute = int(time.time() // 60)
    for pool_id, c in taken.items():
        held, total, started = await engine.record_counts(
            pool_id, minute, c, BUCKET_TTL_S, PRESSURE_PCT, HOUR_MS, blocked.get(pool_id, ()))
        if started:
            await engine.redis.execute(
                "XADD", engine.keys.events_stream(), "MAXLEN", "~", "100000", "*",
                "event", "pool.pressure", "pool_id", pool_id, "active_sessions", str(held),
                "numbers", str(total), "at", str(int(time.time() * 1000)))


async def flusher(counts: Counts, engine: Engine, interval_s: float) -> None:
    """Flush forever; errors are logged (the counts of that interval are lost)."""
    outage = Throttled(log)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await flush(counts, engine)
        except Exception as exc:  # Redis away: keep serving, say so (now and then)
            outage.warn("could not flush answer counts: %s", exc)


def beat_s(heartbeat_s: int, session_length_ms: int) -> int:
    """The heartbeat interval told to the snippet: DNI_HEARTBEAT_S, but at most half the
    pool's session length (at least 1 s), so a beating page never loses its session."""
    if session_length_ms and session_length_ms < 2000 * heartbeat_s:
        return max(1, session_length_ms // 2000)
    return heartbeat_s


def erlang_b(servers: int, load: float) -> float:
    """Blocking probability of an M/G/N/N loss system with offered load `load` (Erlangs)."""
    b = 1.0
    for n in range(1, servers + 1):
        b = load * b / (n + load * b)
    return b


def recommended_size(load: float, target: float) -> int:
    """The smallest pool size whose blocking probability is at most `target`."""
    if load <= 0:
        return 0
    b, n = 1.0, 0
    while b > target:
        n += 1
        b = load * b / (n + load * b)
    return n


def _sum(buckets: list[list[Any]]) -> tuple[dict[str, int], int]:
    """Totals of minute buckets (HMGET *FIELDS, *ENDED_FIELDS, "peak") and their peak."""
    totals = dict.fromkeys((*FIELDS, *ENDED_FIELDS), 0)
    peak = 0
    for values in buckets:
        for field, v in zip(totals, values):
            if v is not None:
                totals[field] += int(v)
        if values[-1] is not None:
            peak = max(peak, int(values[-1]))
    return totals, peak


async def pool_stats(engine: Engine, pool_id: str, heartbeat_s: int,
                     target: float = 0.01) -> dict[str, Any]:
    k, redis = engine.keys, engine.redis
    s = await engine.stats(pool_id)  # PoolNotFound if there is none
    cfg, inactive = await asyncio.gather(
        redis.execute("HMGET", k.pool(pool_id), "ttl_ms", "created_at", "pressure_at",
                      "pressure_since"),
        redis.execute("ZCARD", k.inactive(pool_id)))
    ttl_ms, created_at, pressure_at, pressure_since = (int(v) if v else 0 for v in cfg)
    now_min = s.now_ms // 60_000
    names = (*FIELDS, *ENDED_FIELDS, "peak")
    rows, rest, blocked_in = await engine.pool_counts(pool_id, now_min, names, BUSY_MINUTES)
    buckets = [[v if v != b"" else None for v in rows[i:i + len(names)]]
               for i in range(0, len(rows), len(names))]  # the hour's minutes, newest first
    hour, peak_hour = _sum(buckets)
    day, peak_day = _sum([*buckets, rest])  # the day's other minutes come summed
    peak_hour = max(peak_hour, s.active_sessions)
    peak_day = max(peak_day, peak_hour)

    # Minute i (0: the current one, so far) starts at (now_min - i) minutes; a span of
    # minutes is counted over its part after the pool's creation.
    def span_s(newest: int, oldest: int) -> float:
        start = (now_min - oldest) * 60_000
        if created_at:
            start = max(start, created_at)
        return max(1.0, (min(s.now_ms, (now_min - newest + 1) * 60_000) - start) / 1000)

    # Arrivals: sessions started, plus the distinct visitors turned away (the snippet asks
    # again every heartbeat_s while a pool is full: its retries are the same arrival).
    # Sized for the busiest 15 minutes of the hour, not its mean: a burst is what fills a
    # pool, and the recommendation must not shrink while the hour forgets the burst.
    spans = [(0, 59)] + [(i, i + BUSY_MINUTES - 1) for i in range(60 - BUSY_MINUTES + 1)]
    new_per_min = [int(b[0]) if b[0] is not None else 0 for b in buckets[:60]]
    # spans shorter than the current one (the pool's age, when younger) are left out: a
    # few minutes of a young pool's life would make a noisy rate
    lengths = [span_s(a, b) for a, b in spans]
    shortest = min(14 * 60, lengths[1])
    rates = [(sum(new_per_min[a:b + 1]) + blocked) / length
             for (a, b), blocked, length in zip(spans, blocked_in, lengths)]
    blocked, rate_hour = blocked_in[0], rates[0]
    rate = max(r for r, length in zip(rates[1:], lengths[1:]) if length >= shortest)
    ttl_s = ttl_ms / 1000
    if hour["ended"]:  # the leases themselves: page views, tabs and beats all counted
        holding_s = hour["held_ms"] / hour["ended"] / 1000
        visit_s = max(0.0, holding_s - ttl_s)
    else:
        # each heartbeat answered `alive` stands for one beat interval of the visit: the
        # one the broker tells the snippet for this pool's session length
        beat = beat_s(heartbeat_s, ttl_ms)
        visit_s = hour["alive"] * beat / hour["new"] if hour["new"] else 0.0
        holding_s = visit_s + ttl_s
    load = rate * holding_s
    pressure = bool(pressure_at) and s.now_ms - pressure_at <= HOUR_MS
    return {
        "pool_id": pool_id,
        "numbers": s.numbers,
        "inactive_numbers": inactive,
        "active_sessions": s.active_sessions,
        "available": s.numbers - s.on_active_numbers,  # free active numbers
        "utilization": round(s.utilization, 4),
        "at": s.now_ms,
        "counts": {"last_hour": {f: hour[f] for f in STATUSES},
                   "last_day": {f: day[f] for f in STATUSES}},
        "peak_concurrent": {"last_hour": peak_hour, "last_day": peak_day},
        "pressure": pressure,
        "pressure_since": pressure_since if pressure else None,
        "sizing": {
            "target_fallback": target,
            "arrivals_per_s": round(rate, 6),
            "arrivals_per_s_last_hour": round(rate_hour, 6),
            "blocked_visitors_last_hour": blocked,
            "ended_sessions_last_hour": hour["ended"],
            "mean_visit_s": round(visit_s, 3),
            "holding_time_s": round(holding_s, 3),
            "offered_load_erlangs": round(load, 4),
            "fallback_probability": round(erlang_b(s.numbers, load), 6) if load else 0.0,
            "recommended_size": recommended_size(load, target),
        },
    }
