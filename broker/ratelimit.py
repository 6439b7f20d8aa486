"""Per-client rate limit of the edge API, so that one client cannot drain a pool.

A script that asks for sessions under ever new visitor ids would hold every number of a
pool and leave real visitors with the backup number. With `DNI_RATE_LIMIT` set (off by
default: see the README), each broker process lets one client IP make at most that many
edge requests a minute on average, with bursts of up to a tenth of that (at least 10),
and answers 429 `rate_limited` with a `Retry-After` beyond it. The snippet treats the 429 like any error: the page keeps its
own number.

The limit is a GCRA (generic cell rate algorithm): one float per client, the theoretical
time its next request is due, so a check is a dict lookup and a comparison. Clients that
have been quiet for longer than a burst are forgotten when the table grows, which keeps
it bounded. It is per process: with N broker processes a client gets up to N times the
limit, which is the usual trade of a limiter that costs no Redis round trip.

The IP is the peer's, or the forwarded one from a trusted proxy (DNI_TRUSTED_PROXIES);
an IPv6 client counts as its /64 network.
Loopback peers are not limited: a local reverse proxy that is not configured as trusted
would otherwise put every visitor behind one address, and local load tests would stop.
"""

from __future__ import annotations

import ipaddress
import math
import time

from .errors import ApiError

_LOOPBACK = ("127.", "::ffff:127.")  # IPv4 loopback, also as IPv4-mapped IPv6
_SWEEP_AT = 50_000  # clients remembered before quiet ones are dropped


def _client(ip: str) -> str | None:
    """Who `ip` is for the limits: None when not limited (unknown, loopback), an IPv6
    address's /64, else the address."""
    if not ip or ip == "::1" or ip.startswith(_LOOPBACK):
        return None
    if ":" in ip and not ip.startswith("::ffff:"):
        return _network(ip)
    return ip


def _network(ip: str) -> str:
    """An IPv6 client is its /64: one subscriber gets a whole /64 and can pick any address
    in it, so counting addresses would give one client billions of budgets."""
    try:
        return ipaddress.IPv6Address(ip).packed[:8].hex() + "::/64"
    except ValueError:
        return ip


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.enabled = per_minute > 0
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        # A burst of up to a tenth of the minute's allowance, at least 10 requests, at
        # once (GCRA: the first is on time, the other burst - 1 early by this much).
        self.tolerance = self.interval * (max(10, per_minute // 10) - 1)
        self.due: dict[str, float] = {}
        self.sweep_at, self.sweep_after = _SWEEP_AT, 0.0
        self.limited = 0  # requests refused since start (for logs and tests)

    def check(self, ip: str, now: float | None = None) -> None:
        """Count one request of `ip`; raise ApiError(429) when it is over the limit."""
        if not self.enabled:
            return
        client = _client(ip)
        if client is None:
            return
        ip = client
        if now is None:
            now = time.monotonic()
        due = self.due.get(ip, now)
        if due < now:
            due = now
        wait = due - self.tolerance - now
        if wait > 0:
            self.limited += 1
            raise ApiError(429, "rate_limited",
                           f"too many requests from {ip}; retry in {math.ceil(wait)} s",
                           {"retry-after": str(math.ceil(wait)),
                            # let the page's script read it (CORS hides it otherwise)
                            "access-control-expose-headers": "Retry-After"})
        self.due[ip] = due + self.interval
        if len(self.due) > self.sweep_at or (len(self.due) > _SWEEP_AT
                                             and now >= self.sweep_after):
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Forget clients whose allowance is full again (they are as good as new). Above
        the threshold, again after a minute or once the table has doubled: many active
        clients must not make every request rebuild it."""
        self.due = {ip: due for ip, due in self.due.items() if due > now}
        self.sweep_at = max(_SWEEP_AT, 2 * len(self.due))
        self.sweep_after = now + 60


class NewSessionCap:
    """At most `cap` new sessions per client (an IPv4 address, an IPv6 /64) in one pool
    within one session length (DNI_MAX_NEW_SESSIONS_PER_IP; 0: off), kept per process.

    A request limit slows a script that asks under ever new visitor ids; this bounds the
    numbers it takes: `cap` per session length (more only if it keeps them beating).
    Over the cap, the client's requests may still reuse their live sessions (the session
    script runs in its reuse-only mode), and a visitor without one is `excluded`: the
    page keeps its own number.

    A request is counted when it is sent to Redis (`reserve`), so requests arriving
    together cannot all pass the check before any answer comes back, and given back
    unless the answer is a new session (`settle`).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        # (pool, client) -> [window ends at, new sessions in it, requests in flight]
        self.windows: dict[tuple[str, str], list[float]] = {}
        self.sweep_at, self.sweep_after = _SWEEP_AT, 0.0

    def reserve(self, pool_id: str, ip: str, now: float | None = None
                ) -> tuple[str, str] | bool | None:
        """Before the session script: None (not capped: loopback...), False (over the
        cap: reuse only), or a slot to `settle` with the answer."""
        client = _client(ip)
        if client is None:
            return None
        now = time.monotonic() if now is None else now
        key = (pool_id, client)
        w = self.windows.get(key)
        if w is None:
            if len(self.windows) >= self.sweep_at or (len(self.windows) >= _SWEEP_AT
                                                      and now >= self.sweep_after):
                self.sweep(now)
            w = self.windows[key] = [now, 0, 0]
        elif w[0] <= now:
            w[1] = 0  # its window ended: a new one starts with the next new session
        if w[1] + w[2] >= self.cap:
            return False
        w[2] += 1
        return key

    def settle(self, slot: tuple[str, str], new: bool, length_ms: int,
               now: float | None = None) -> None:
        w = self.windows.get(slot)
        if w is None:
            return
        w[2] -= 1
        if new:
            now = time.monotonic() if now is None else now
            if w[0] <= now:
                w[0], w[1] = now + length_ms / 1000, 0
            w[1] += 1

    def sweep(self, now: float) -> None:
        """Forget the windows that ended (none in flight); as RateLimiter.sweep, again
        after a minute or once the table has doubled."""
        self.windows = {k: w for k, w in self.windows.items() if w[0] > now or w[2]}
        self.sweep_at = max(_SWEEP_AT, 2 * len(self.windows))
        self.sweep_after = now + 60
