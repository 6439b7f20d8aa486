"""A synchronous face of the Lua scripts for tests: redis-py (or fakeredis) underneath."""

from __future__ import annotations

from typing import Any

import redis

from broker.keys import Keys
from broker.scripts import load_scripts

SCRIPTS = load_scripts()


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


class Scripts:
    def __init__(self, client: redis.Redis, prefix: str = "dni") -> None:
        self.r = client
        self.keys = Keys(prefix)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = SCRIPTS[name]
        script.check(keys)
        try:
            return self.r.evalsha(script.sha, script.numkeys, *keys, *args)
        except redis.exceptions.NoScriptError:
            return self.r.eval(script.body, script.numkeys, *keys, *args)

    def make_pool(self, pool_id: str, numbers: list[str], ttl_ms: int = 60_000,
                  fallback: str = "", policy: str = "random") -> None:
        k = self.keys
        fields = ["ttl_ms", ttl_ms, "fallback", fallback, "policy", policy, "name", pool_id]
        assert self.run("create_pool", [k.pool(pool_id), k.numbers(pool_id)],
                        [len(fields) // 2, *fields, *numbers]) == 1

    def session(self, pool_id: str, visitor_id: str, sid: str, pick: int = 0,
                ip: str = "127.0.0.1", ua: str = "test", attribution: str = "{}",
                grace_ms: int = 0) -> tuple:
        source = f"{ip}\n{ua}\n{attribution}"
        out = self.run("session", self.keys.session_keys(pool_id, visitor_id),
                       [sid, pick, visitor_id, pool_id, source, grace_ms])
        return tuple(_s(v) for v in out[:4])  # status, number, session id, expires_at

    def heartbeat(self, pool_id: str, visitor_id: str, sid: str) -> tuple:
        out = self.run("heartbeat", self.keys.heartbeat_keys(pool_id, visitor_id),
                       [sid, visitor_id])
        return tuple(_s(v) for v in out)

    def add_numbers(self, pool_id: str, numbers: list[str]) -> int:
        k = self.keys
        return self.run("add_numbers", [k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id)],
                       numbers)

    def _with_holder(self, name: str, pool_id: str, number: str, keys: list[str]) -> int:
        """Read the holder lease, then run the script with that visitor's record."""
        for _ in range(20):
            lease = _s(self.r.hget(self.keys.holders(pool_id), number)) or ""
            visitor = lease.split("|")[1] if lease else ""
            code = self.run(name, [*keys, self.keys.visitor(pool_id, visitor)],
                            [number, lease, pool_id])
            if code != -2:
                return code
        raise AssertionError("lease kept changing")

    def remove_number(self, pool_id: str, number: str) -> int:
        k = self.keys
        return self._with_holder("remove_number", pool_id, number, [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.flows(pool_id), k.outbox(pool_id)])

    def activate_number(self, pool_id: str, number: str) -> int:
        k = self.keys
        return self._with_holder("activate_number", pool_id, number, [
            k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
            k.outbox(pool_id)])

    def deactivate_number(self, pool_id: str, number: str) -> int:
        k = self.keys
        return self.run("deactivate_number", [k.pool(pool_id), k.numbers(pool_id),
                                              k.inactive(pool_id), k.holders(pool_id),
                                              k.outbox(pool_id)], [number, pool_id])

    def stats(self, pool_id: str) -> tuple[int, int, int]:
        k = self.keys
        # numbers, active sessions, now (the 4th, sessions on active numbers: stats.py)
        return tuple(self.run("pool_stats", [k.pool(pool_id), k.numbers(pool_id),
                                             k.inactive(pool_id)], []))[:3]

    def end_keys(self, pool_id: str) -> list[str]:
        """KEYS of end_sessions-5.lua."""
        k = self.keys
        return [k.pool(pool_id), k.numbers(pool_id), k.inactive(pool_id), k.holders(pool_id),
                k.outbox(pool_id)]


# An atomic snapshot of one pool for invariant checks (test-only; never shipped).
SNAPSHOT_LUA = """
local visitors = {}
for i = 4, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 's', 'n')
  v[3] = redis.call('PEXPIRETIME', KEYS[i])
  visitors[#visitors + 1] = v
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),
        redis.call('HGETALL', KEYS[2]), visitors, redis.call('ZRANGE', KEYS[3], 0, -1)}
"""


def lease_end(lease: str) -> int:
    """The end (epoch ms) a lease "sid|vid|started|expires|heartbeats[|e]" was given."""
    return int(lease.split("|")[3])


def snapshot(client: redis.Redis, keys: Keys, pool_id: str, visitor_ids: list[str]) -> dict:
    """One pool read in one atomic step: {now, scores: {number: score}, holders: {number:
    lease}, inactive: {deactivated numbers}, records: {visitor: (sid, number)} for every
    visitor record that exists at `now`, live: {visitor: (sid, number)} for those whose
    lease (the number's holders entry) is theirs and unexpired, lease_end: {visitor: end
    of the lease by its record's expiry}}. A session on a deactivated number is live while
    its record exists (it keeps its number to its end).

    Redis checks key expiry against the time the script started, while TIME reads the
    clock later, so a record is counted only if it still exists at `now` (its expiry time
    >= now): both are then judged at the same instant."""
    vkeys = [keys.visitor(pool_id, v) for v in visitor_ids]
    now, zr, hs, vs, inactive = client.eval(
        SNAPSHOT_LUA, 3 + len(vkeys), keys.numbers(pool_id), keys.holders(pool_id),
        keys.inactive(pool_id), *vkeys)
    inactive = {_s(n) for n in inactive}
    scores = {_s(zr[i]): float(zr[i + 1]) for i in range(0, len(zr), 2)}
    holders = {_s(hs[i]): _s(hs[i + 1]) for i in range(0, len(hs), 2)}
    live, records, record_exp = {}, {}, {}
    for vid, (sid, number, expire_at) in zip(visitor_ids, vs):
        if sid is None or expire_at < now:
            continue
        sid, number = _s(sid), _s(number)
        records[vid] = (sid, number)
        record_exp[vid] = expire_at + 1  # the lease's end
        lease = holders.get(number, "")
        if (lease.startswith(f"{sid}|{vid}|") and not lease.endswith("|e")
                and lease_end(lease) > now):
            live[vid] = (sid, number)
    return {"now": now, "scores": scores, "holders": holders, "live": live,
            "records": records, "inactive": inactive, "lease_end": record_exp}


def check_invariant(snap: dict, active_numbers: set[str]) -> None:
    """No two live sessions share a number; a held number is not available; held +
    available = the pool's active numbers; every visitor record that exists is a live
    session whose lease ends with it; a held number's score never passes its lease's end
    (session-5.lua: scores are lower bounds, which the assignment checks)."""
    now, scores, live, holders = snap["now"], snap["scores"], snap["live"], snap["holders"]
    for vid, (sid, number) in snap["records"].items():
        assert live.get(vid) == (sid, number), f"record of {vid} without its lease: {snap}"
        assert lease_end(holders[number]) == snap["lease_end"][vid], (vid, snap)
    held_by_sessions = [n for _, n in live.values()]
    assert len(held_by_sessions) == len(set(held_by_sessions)), f"shared number: {live}"
    held = {n for n in scores if n in holders and not holders[n].endswith("|e")
            and lease_end(holders[n]) > now}
    available = set(scores) - held
    assert held | available == active_numbers == set(scores)
    assert not snap["inactive"] & set(scores), "a number both active and inactive"
    assert all(scores[n] <= lease_end(holders[n]) for n in held), (scores, holders)
    held_by_sessions = [n for n in held_by_sessions if n in scores]  # not the inactive
    # every held number belongs to exactly one live session, and vice versa; the one
    # exception is the last millisecond of a lease, where a record may already be gone
    # (fakeredis expires keys on the fractional millisecond; real Redis on whole ones)
    assert set(held_by_sessions) <= held, (held, live)
    assert all(lease_end(holders[n]) <= now + 1 for n in held - set(held_by_sessions)), (
        held, live)
