"""The edge's per-client rate limit: 429 `rate_limited` beyond it, nothing lost below it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from broker.errors import ApiError
from broker.ratelimit import NewSessionCap, RateLimiter
from tests.conftest import ADMIN_TOKEN, BrokerProcess, numbers


def test_allows_a_burst_then_the_average_rate():
    limiter = RateLimiter(per_minute=600)  # 10/s on average, bursts of 60
    for _ in range(60):
        limiter.check("203.0.113.9", now=100.0)
    with pytest.raises(ApiError) as refused:
        limiter.check("203.0.113.9", now=100.0)
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.headers == {"retry-after": "1",
                                     "access-control-expose-headers": "Retry-After"}
    limiter.check("198.51.100.1", now=100.0)  # another client is not affected
    limiter.check("203.0.113.9", now=100.1)  # a tenth of a second frees one request
    with pytest.raises(ApiError):
        limiter.check("203.0.113.9", now=100.1)
    assert limiter.limited == 2


def test_refused_requests_do_not_count():
    limiter = RateLimiter(per_minute=60)  # 1/s, bursts of 10
    for _ in range(10):
        limiter.check("203.0.113.9", now=0.0)
    for _ in range(1000):  # a client that keeps hammering is not pushed further back
        with pytest.raises(ApiError):
            limiter.check("203.0.113.9", now=0.5)
    limiter.check("203.0.113.9", now=1.0)


def test_loopback_and_zero_are_not_limited():
    limiter = RateLimiter(per_minute=1)
    for _ in range(100):
        limiter.check("127.0.0.1", now=0.0)
        limiter.check("::1", now=0.0)
        limiter.check("::ffff:127.0.0.1", now=0.0)
    for _ in range(10):  # not loopback: limited like any client (a burst of 10, then no)
        limiter.check("::1:2", now=0.0)
    with pytest.raises(ApiError):
        limiter.check("::1:2", now=0.0)
    off = RateLimiter(per_minute=0)
    for _ in range(100):
        off.check("203.0.113.9", now=0.0)


def test_the_table_forgets_quiet_clients():
    limiter = RateLimiter(per_minute=600)
    for i in range(50_001):
        limiter.check(f"10.0.{i // 256}.{i % 256}", now=float(i) / 1e6)
    # everyone else is quiet by now, and the table is swept at most once a minute
    limiter.check("203.0.113.9", now=120.0)
    assert len(limiter.due) <= 2


def test_edge_answers_429_with_the_error_shape(redis_server, r):
    b = BrokerProcess(redis_server, env={"DNI_RATE_LIMIT": "60",
                                         "DNI_TRUSTED_PROXIES": "127.0.0.1"}).start()
    try:
        with httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            pool = admin.post("/v1/pools", json={"name": "rl", "numbers": numbers(50)}).json()
        with httpx.Client(base_url=b.url, headers={"X-Forwarded-For": "203.0.113.9"}) as c:
            answers = [c.post("/v1/dni/session", json={"pool_id": pool["id"],
                                                       "visitor_id": f"v{i}"})
                       for i in range(20)]
            other = httpx.post(b.url + "/v1/dni/session", headers={
                "X-Forwarded-For": "198.51.100.7"}, json={"pool_id": pool["id"],
                                                          "visitor_id": "w"})
        codes = [a.status_code for a in answers]
        assert codes[:10] == [200] * 10 and set(codes[11:]) == {429}
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["access-control-expose-headers"] == "Retry-After"
        assert refused.headers["access-control-allow-origin"] == "*"
        assert other.status_code == 200  # a different client is served
        # a refused request held nothing: only the served visitors hold numbers
        assert r.zcount(f"dni:{{{pool['id']}}}:numbers", "(0", "+inf") == codes.count(200) + 1
    finally:
        b.stop()


def test_an_ipv6_client_is_its_slash_64():
    """Addresses of one /64 (one subscriber's) share a budget; another /64 has its own."""
    limiter = RateLimiter(per_minute=60)  # bursts of 10
    for i in range(10):
        limiter.check(f"2001:db8:1:2::{i + 1:x}", now=0.0)
    with pytest.raises(ApiError):
        limiter.check("2001:db8:1:2:ffff:ffff:ffff:ffff", now=0.0)
    with pytest.raises(ApiError):
        limiter.check("2001:0db8:0001:0002:0000:0000:0000:0099", now=0.0)  # spelt out
    limiter.check("2001:db8:1:3::1", now=0.0)  # the next /64
    for i in range(10):  # IPv4, also as IPv4-mapped, stays per address
        limiter.check(f"::ffff:203.0.113.{i}", now=0.0)


def test_the_new_session_cap_counts_per_client_pool_and_session_length():
    cap = NewSessionCap(2)

    def ask(pool: str, ip: str, now: float, new: bool = True) -> bool:
        """One session request: True if it was let through to assign."""
        slot = cap.reserve(pool, ip, now=now)
        if slot:
            cap.settle(slot, new, 60_000, now=now)
        return slot is not False

    assert ask("p", "203.0.113.9", 0.0) and ask("p", "203.0.113.9", 0.0)
    assert not ask("p", "203.0.113.9", 1.0)
    assert ask("q", "203.0.113.9", 1.0)  # another pool
    assert ask("p", "198.51.100.7", 1.0)  # another client
    assert ask("p", "203.0.113.9", 60.0)  # one session length later
    assert ask("p", "2001:db8::1", 0.0) and ask("p", "2001:db8::2", 0.0)
    assert not ask("p", "2001:db8::ffff", 0.0)  # one /64
    assert all(cap.reserve("p", "127.0.0.1", now=0.0) is None for _ in range(5))  # loopback
    # answers that are not new sessions (reused, fallback) do not count
    assert all(ask("r", "192.0.2.1", 0.0, new=False) for _ in range(5))
    # requests in flight count: two sent together fill the cap before any answer
    s1, s2 = (cap.reserve("t", "192.0.2.2", now=0.0) for _ in range(2))
    assert s1 and s2 and cap.reserve("t", "192.0.2.2", now=0.0) is False
    cap.settle(s1, False, 60_000, now=0.0)  # not a new session: its place is free again
    assert cap.reserve("t", "192.0.2.2", now=0.0)


def test_the_tables_are_not_rebuilt_on_every_request_when_full_of_live_clients():
    cap = NewSessionCap(5)
    for i in range(60_000):  # live windows (30 min), more than the sweep threshold
        slot = cap.reserve("p", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=0.0)
        cap.settle(slot, True, 1_800_000, now=0.0)
    assert len(cap.windows) == 60_000 and cap.sweep_at >= 100_000
    limiter = RateLimiter(per_minute=60)
    for i in range(60_000):
        limiter.check(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=0.0)
    assert limiter.sweep_at >= 100_000


def test_a_client_over_its_new_session_cap_is_excluded_but_keeps_its_sessions(
        redis_server, r):
    """DNI_MAX_NEW_SESSIONS_PER_IP=2: a script asking under ever new visitor ids holds 2
    numbers of the pool, not all of them, even asking all at once; its visitors' sessions
    are still reused and beat; another client is served."""
    b = BrokerProcess(redis_server, env={"DNI_MAX_NEW_SESSIONS_PER_IP": "2",
                                         "DNI_TRUSTED_PROXIES": "127.0.0.1"}).start()
    try:
        with httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            pool = admin.post("/v1/pools", json={"name": "cap", "numbers": numbers(10)}).json()
        with httpx.Client(base_url=b.url, headers={"X-Forwarded-For": "203.0.113.9"}) as c:
            def ask(v: str) -> dict:
                res = c.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": v})
                assert res.status_code == 200, res.text
                return res.json()

            first = [ask(f"v{i}") for i in range(5)]
            assert [a["status"] for a in first] == ["new", "new"] + ["excluded"] * 3
            assert all(a["number"] is None for a in first[2:])

            async def at_once() -> list[str]:  # 20 more visitors, all in flight together
                async with httpx.AsyncClient(base_url=b.url, headers={
                        "X-Forwarded-For": "203.0.113.10"}) as ac:
                    answers = await asyncio.gather(*(ac.post("/v1/dni/session", json={
                        "pool_id": pool["id"], "visitor_id": f"w{i}"}) for i in range(20)))
                return [a.json()["status"] for a in answers]

            together = asyncio.run(at_once())
            assert sorted(together) == ["excluded"] * 18 + ["new"] * 2, together
            again = ask("v0")
            assert again["status"] == "reused" and again["number"] == first[0]["number"]
            beat = c.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v1",
                                                     "session_id": first[1]["session_id"]})
            assert beat.json()["status"] == "alive"
        other = httpx.post(b.url + "/v1/dni/session", headers={"X-Forwarded-For": "198.51.100.7"},
                           json={"pool_id": pool["id"], "visitor_id": "w"})
        assert other.json()["status"] == "new"
        assert r.zcount(f"dni:{{{pool['id']}}}:numbers", "(0", "+inf") == 5
    finally:
        b.stop()
