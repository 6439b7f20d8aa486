"""Hypothesis state machine over the scripts: the pool invariant holds after every step.

Runs against the real redis-server, and against fakeredis (with Lua) for more examples.
Time is real (the scripts use Redis's TIME): the session length is short (ms) and the
`wait` rule sleeps, so expiry happens between and during steps. Expectations that
depend on timing are checked only outside a small margin around an expiry.
"""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.conftest import numbers
from tests.scriptclient import Scripts, check_invariant, lease_end, snapshot

TTL_MS = 250
MARGIN_MS = 60
GRACE_MS = 200  # the call grace period, when a step uses one
VISITORS = [f"v{i}" for i in range(6)]
POOL = "sm"


class PoolMachine(RuleBasedStateMachine):
    client: redis.Redis  # set by the test

    @initialize(size=st.integers(0, 4), backup=st.booleans())
    def setup(self, size: int, backup: bool) -> None:
        self.client.flushall()
        self.s = Scripts(self.client)
        self.active = set(numbers(size))
        self.inactive: set[str] = set()
        self.next_number = size
        self.backup = "+15550199999" if backup else ""
        self.s.make_pool(POOL, sorted(self.active), ttl_ms=TTL_MS, fallback=self.backup)
        self.sids: dict[str, str] = {}
        self.counter = 0
        self.claims: dict[str, list] = {}  # session id -> [number, start_ms, end_ms]

    def _told(self, sid: str, number: str, expires_at: int, new: bool) -> None:
        """Record what a client was told; two sessions' leases on a number never overlap."""
        if new:
            assert sid not in self.claims
            self.claims[sid] = [number, expires_at - TTL_MS, expires_at]
        else:
            claim = self.claims[sid]
            assert claim[0] == number
            claim[2] = max(claim[2], expires_at)
        mine = self.claims[sid]
        for other, (n, start, end) in self.claims.items():
            if other != sid and n == number:
                assert end <= mine[1] or mine[2] <= start, (sid, mine, other, start, end)

    def _snap(self) -> dict:
        return snapshot(self.client, self.s.keys, POOL, VISITORS)

    @rule(visitor=st.sampled_from(VISITORS), pick=st.integers(0, 2**31 - 1),
          grace=st.sampled_from([0, GRACE_MS]))
    def session(self, visitor: str, pick: int, grace: int) -> None:
        before = self._snap()
        now = before["now"]
        own = before["live"].get(visitor)
        own_exp = before["lease_end"][visitor] if own else 0
        sure_free = [n for n, s in before["scores"].items() if s <= now]
        self.counter += 1
        status, number, sid, exp = self.s.session(POOL, visitor, f"s{self.counter}", pick,
                                                  grace_ms=grace)
        if status == "new" and grace:
            # a number freed within the grace period is not given while one free for
            # longer is there (judged outside the margin: the script's clock runs later)
            held = {n for _, n in before["live"].values()}
            since = {n: max(sc, lease_end(before["holders"][n]) if n in before["holders"]
                            else 0) for n, sc in before["scores"].items() if n not in held}
            if any(t <= now - grace - MARGIN_MS for t in since.values()):
                assert since[number] <= now + MARGIN_MS - grace, (number, since, now)
        if own and own_exp > now + MARGIN_MS:
            assert (status, number, sid) == ("reused", own[1], own[0])
        elif status == "reused":
            assert own and (number, sid) == (own[1], own[0])
        elif status == "new":
            assert sid == f"s{self.counter}" and number in self.active
        elif not own:
            assert not sure_free, "a free number was there"
            assert status == ("fallback" if self.backup else "unavailable")
            if status == "fallback":
                assert number == self.backup and sid is None
        if status in ("new", "reused"):
            self.sids[visitor] = sid
            self._told(sid, number, exp, new=status == "new")

    @rule(visitor=st.sampled_from(VISITORS), stale=st.booleans())
    def heartbeat(self, visitor: str, stale: bool) -> None:
        before = self._snap()
        own = before["live"].get(visitor)
        sid = "stale" if stale or visitor not in self.sids else self.sids[visitor]
        status, number, exp = self.s.heartbeat(POOL, visitor, sid)
        if own is None or own[0] != sid:
            assert status == "expired"  # never revives, never takes a session over
        elif before["lease_end"][visitor] > before["now"] + MARGIN_MS:
            assert (status, number) == ("alive", own[1])
        if status == "alive":
            self._told(sid, number, exp, new=False)

    @rule(count=st.integers(1, 3))
    def add_numbers(self, count: int) -> None:
        new = numbers(count, start=self.next_number)
        self.next_number += count
        assert self.s.add_numbers(POOL, new) == count
        self.active |= set(new)

    @rule(data=st.data())
    def add_numbers_again(self, data: st.DataObject) -> None:
        """Adding numbers the pool has changes nothing: a deactivated one stays so."""
        pool = sorted(self.active | self.inactive)
        if pool:
            again = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3,
                                       unique=True))
            assert self.s.add_numbers(POOL, again) == 0

    @rule(data=st.data())
    def remove_number(self, data: st.DataObject) -> None:
        """The session holding the number ends at once: its next heartbeat is expired."""
        pool = sorted(self.active | self.inactive)
        if not pool:
            return
        number = data.draw(st.sampled_from(pool))
        before = self._snap()
        holder = [v for v, (_, n) in before["live"].items() if n == number]
        assert self.s.remove_number(POOL, number) == 1
        self.active.discard(number)
        self.inactive.discard(number)
        assert self.s.remove_number(POOL, number) == 0
        for visitor in holder:
            assert self.s.heartbeat(POOL, visitor, self.sids[visitor])[0] == "expired"
            assert visitor not in self._snap()["records"]

    @rule(data=st.data())
    def deactivate_number(self, data: st.DataObject) -> None:
        """Never assigned again; a session holding it keeps it to its end."""
        if not self.active:
            return
        number = data.draw(st.sampled_from(sorted(self.active)))
        before = self._snap()
        holder = [v for v, (_, n) in before["live"].items() if n == number]
        assert self.s.deactivate_number(POOL, number) == 1
        self.active.discard(number)
        self.inactive.add(number)
        for visitor in holder:
            if before["lease_end"][visitor] > before["now"] + MARGIN_MS:
                assert self.s.heartbeat(POOL, visitor, self.sids[visitor])[:2] == ("alive", number)

    @rule(data=st.data())
    def activate_number(self, data: st.DataObject) -> None:
        """Back in the pool: held (scored by its lease's end) if a session still holds it."""
        if not self.inactive:
            return
        number = data.draw(st.sampled_from(sorted(self.inactive)))
        assert self.s.activate_number(POOL, number) == 1
        self.inactive.discard(number)
        self.active.add(number)
        assert self.s.activate_number(POOL, number) == 2

    @rule(ms=st.sampled_from([0, 40, 120, 300]))
    def wait(self, ms: int) -> None:
        time.sleep(ms / 1000)

    @invariant()
    def pool_invariant(self) -> None:
        if hasattr(self, "s"):
            check_invariant(self._snap(), self.active)
            total, held, _ = self.s.stats(POOL)
            # sessions go on on deactivated numbers, and count as live
            assert total == len(self.active) and 0 <= held <= total + len(self.inactive)


SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck),
                stateful_step_count=30)


@pytest.mark.slow
def test_invariant_on_real_redis(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    machine = type("RealRedisMachine", (PoolMachine,), {"client": client})
    machine.TestCase.settings = settings(max_examples=25, **SETTINGS)
    try:
        machine.TestCase().runTest()
    finally:
        client.flushall()
        client.close()


def test_invariant_on_fakeredis() -> None:
    client = fakeredis.FakeRedis()
    machine = type("FakeRedisMachine", (PoolMachine,), {"client": client})
    machine.TestCase.settings = settings(max_examples=40, **SETTINGS)
    machine.TestCase().runTest()
