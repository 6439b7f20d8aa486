"""Stats, pressure and sizing: counts over HTTP on real Redis, the lru policy's reuse
order on real Redis, and the Erlang B recommendation against a discrete-event simulation."""

from __future__ import annotations

import heapq
import random
import time

import pytest

from broker.stats import erlang_b, recommended_size
from tests.conftest import numbers
from tests.scriptclient import Scripts, lease_end, snapshot
from tests.test_edge_http import error_of


def test_stats_count_answers_peak_and_pressure(admin, http, make_pool, r):
    pool = make_pool(4, fallback_number="+15550199999", session_ttl_s=600)
    pid = pool["id"]
    sessions = [http.post("/v1/dni/session", json={"pool_id": pid, "visitor_id": f"v{i}"}).json()
                for i in range(5)]  # 4 new, 1 fallback
    http.post("/v1/dni/session", json={"pool_id": pid, "visitor_id": "v0"})  # reused
    for s in sessions[:2]:
        http.post("/v1/dni/heartbeat", json={"pool_id": pid, "visitor_id": "v0",
                                             "session_id": sessions[0]["session_id"]})
    time.sleep(1.5)  # the broker flushes its counts about once a second
    st = admin.get(f"/v1/pools/{pid}/stats").json()
    assert st["numbers"] == 4 and st["active_sessions"] == 4 and st["utilization"] == 1.0
    want = {"new": 4, "reused": 1, "fallback": 1, "unavailable": 0}
    assert st["counts"] == {"last_hour": want, "last_day": want}
    assert st["peak_concurrent"] == {"last_hour": 4, "last_day": 4}
    assert st["pressure"] is True and st["pressure_since"] <= st["at"]
    sizing = st["sizing"]
    assert sizing["target_fallback"] == 0.01
    assert sizing["mean_visit_s"] == pytest.approx(2 * 60 / 4)  # 2 heartbeats, 4 sessions
    assert sizing["holding_time_s"] == pytest.approx(30 + 600)
    age_s = (st["at"] - pool["created_at"]) / 1000  # the pool is younger than the hour
    assert sizing["arrivals_per_s"] == pytest.approx(5 / age_s, rel=1e-3)
    load = 5 / age_s * 630
    assert sizing["offered_load_erlangs"] == pytest.approx(load, rel=1e-3)
    assert sizing["recommended_size"] == recommended_size(load, 0.01)
    assert sizing["fallback_probability"] == pytest.approx(erlang_b(4, load), rel=1e-3)
    events = r.xrange("dni:events")
    assert [(e[b"event"], e[b"pool_id"]) for _, e in events] == [(b"pool.pressure", pid.encode())]
    assert events[0][1][b"active_sessions"] == b"4" and events[0][1][b"numbers"] == b"4"
    # pressure goes on: no second entry while it lasts
    http.post("/v1/dni/session", json={"pool_id": pid, "visitor_id": "v9"})
    time.sleep(1.3)
    assert len(r.xrange("dni:events")) == 1
    # a looser target recommends no more numbers than a strict one
    loose = admin.get(f"/v1/pools/{pid}/stats?target=0.2").json()["sizing"]
    assert loose["recommended_size"] <= sizing["recommended_size"]
    # the per-minute buckets expire on their own (kept 25 hours)
    ttls = [r.ttl(k) for k in r.keys(f"dni:{{{pid}}}:m:*")]
    assert ttls and all(24 * 3600 < t <= 25 * 3600 for t in ttls)


def test_stats_of_all_pools_and_a_quiet_pool(admin, make_pool):
    a, b = make_pool(2), make_pool(0, name="empty")
    res = admin.get("/v1/stats")
    assert res.status_code == 200
    by_id = {p["pool_id"]: p for p in res.json()["pools"]}
    assert set(by_id) == {a["id"], b["id"]}
    assert by_id[a["id"]]["numbers"] == 2 and by_id[b["id"]]["utilization"] == 0.0
    assert by_id[a["id"]]["sizing"]["recommended_size"] == 0
    assert by_id[a["id"]]["pressure"] is False


@pytest.mark.parametrize("target", ["0", "1", "x", "-0.1"])
def test_stats_target_must_be_a_probability(admin, make_pool, target):
    pool = make_pool(1)
    for path in (f"/v1/pools/{pool['id']}/stats", "/v1/stats"):
        res = admin.get(path, params={"target": target})
        assert res.status_code == 422 and error_of(res) == "invalid_target"


# -- lru ------------------------------------------------------------------------------------

def test_lru_reuses_a_number_only_after_all_that_were_free_longer(r):
    """Each assignment takes the number free the longest, so the gap between a number's
    release and its next assignment is the longest possible: with one visitor at a time,
    the numbers come round in turn; with random holds, every pick has the lowest score."""
    s = Scripts(r)
    pool = numbers(4)
    s.make_pool("lru", pool, ttl_ms=30, policy="lru")
    order = []
    for i in range(12):
        status, number, _, exp = s.session("lru", f"w{i}", f"s{i}", pick=random.getrandbits(31))
        assert status == "new"
        order.append(number)
        time.sleep(max(0, exp / 1000 - time.time()) + 0.005)
    assert order == pool * 3

    s.make_pool("lru2", numbers(6, 100), ttl_ms=40, policy="lru")
    rng = random.Random(7)
    visitors = [f"x{i}" for i in range(10)]
    for step in range(150):
        v = rng.choice(visitors)
        snap = snapshot(r, s.keys, "lru2", visitors)
        # free since its last lease's end (its score may lag a refreshed lease)
        since = {n: lease_end(snap["holders"][n]) if n in snap["holders"] else score
                 for n, score in snap["scores"].items()}
        free = sorted((t, n) for n, t in since.items() if t <= snap["now"])
        status, number, _, _ = s.session("lru2", v, f"t{step}", pick=rng.getrandbits(31))
        if status == "new" and v not in snap["live"]:
            # the number free longest at the snapshot (ties: lowest number), unless it
            # was taken between the snapshot and the call (nothing else runs here)
            assert free and number == free[0][1], (number, free)
        time.sleep(rng.choice([0, 0.005, 0.02]))


# -- Erlang B against a simulation --------------------------------------------------------------

def simulate_fallback_rate(size: int, rate: float, holding: float, arrivals: int,
                           seed: int) -> float:
    """A discrete-event simulation of a pool: Poisson arrivals at `rate` per second, each
    holding a number for `holding` seconds (visit plus session length, exponential around
    its mean), a fallback when all `size` numbers are held."""
    rng = random.Random(seed)
    t = 0.0
    ends: list[float] = []
    blocked = 0
    for _ in range(arrivals):
        t += rng.expovariate(rate)
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        if len(ends) >= size:
            blocked += 1
        else:
            heapq.heappush(ends, t + rng.expovariate(1 / holding))
    return blocked / arrivals


def test_erlang_b_known_values():
    assert erlang_b(0, 5.0) == 1.0
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, rel=1e-4)  # standard tables
    assert recommended_size(5.0, 0.01) == 11
    assert recommended_size(0.0, 0.01) == 0


@pytest.mark.parametrize("rate,holding", [(0.02, 1830.0), (0.1, 330.0)])
def test_recommended_size_holds_the_target_in_simulation(rate, holding):
    """A pool of the recommended size falls back at most at the target rate; one number
    fewer does not. (Erlang B does not depend on the holding-time distribution.)"""
    target = 0.01
    load = rate * holding
    size = recommended_size(load, target)
    at_size = simulate_fallback_rate(size, rate, holding, 200_000, seed=1)
    one_fewer = simulate_fallback_rate(size - 1, rate, holding, 200_000, seed=1)
    assert at_size <= target < one_fewer, (size, at_size, one_fewer)
    assert at_size == pytest.approx(erlang_b(size, load), abs=0.003)


def test_available_counts_free_active_numbers_only(admin, http, make_pool):
    """A session going on on a deactivated number is live, but holds no active number:
    `available` is the active numbers free, never negative."""
    pool = make_pool(2)
    a = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "a"}).json()
    admin.post(f"/v1/pools/{pool['id']}/numbers/{a['number']}/deactivate")
    st = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert (st["numbers"], st["active_sessions"], st["available"]) == (1, 1, 1)
    http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "b"})
    st = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert (st["numbers"], st["active_sessions"], st["available"]) == (1, 2, 0)


def test_visit_length_counts_beats_at_the_interval_told(admin, http, make_pool):
    """With 4 s sessions the snippet is told to beat every 2 s: three beats are 6 s of
    visit, not three times DNI_HEARTBEAT_S."""
    pool = make_pool(1, session_ttl_s=4)
    s = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v"}).json()
    assert s["heartbeat_s"] == 2
    for _ in range(3):
        beat = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v",
                                                    "session_id": s["session_id"]}).json()
        assert beat["status"] == "alive"
    time.sleep(1.3)  # the counts are flushed about once a second
    sizing = admin.get(f"/v1/pools/{pool['id']}/stats").json()["sizing"]
    assert sizing["mean_visit_s"] == 6.0 and sizing["holding_time_s"] == 10.0


def test_a_turned_away_visitor_asking_again_is_one_arrival(admin, http, make_pool):
    """While the pool is full the snippet asks again every heartbeat_s: ten fallback
    answers to one visitor are one arrival for the sizing, not ten."""
    pool = make_pool(1, fallback_number="+15550199999")
    asks = [("a", 1), ("b", 10), ("c", 3)]
    for visitor, times in asks:
        for _ in range(times):
            http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": visitor})
    time.sleep(1.3)  # flushed about once a second
    st = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert st["counts"]["last_hour"]["fallback"] == 13  # the answers, as given
    sizing = st["sizing"]
    assert sizing["blocked_visitors_last_hour"] == 2
    age_s = (st["at"] - pool["created_at"]) / 1000
    assert sizing["arrivals_per_s"] == pytest.approx(3 / age_s, rel=1e-3)


def test_a_pool_with_no_numbers_turning_visitors_away_is_under_pressure(admin, http, make_pool,
                                                                       r):
    pool = make_pool(0, fallback_number="+15550199999")
    res = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v"})
    assert res.json()["status"] == "fallback"
    time.sleep(1.3)
    st = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert st["pressure"] is True
    assert [e[b"pool_id"].decode() for _, e in r.xrange("dni:events")] == [pool["id"]]


def test_holding_time_is_the_length_of_the_leases_that_ended(admin, http, make_pool, r):
    """A visitor who views pages more often than the heartbeat interval never beats: the
    holding time is measured on the lease itself (from the sidecar's session.ended), not
    guessed from heartbeats, which would say one session length."""
    pool = make_pool(2, session_ttl_s=2)
    pid = pool["id"]
    ask = {"pool_id": pid, "visitor_id": "reader"}
    first = http.post("/v1/dni/session", json=ask).json()
    time.sleep(1.0)
    again = http.post("/v1/dni/session", json=ask).json()  # a second page: the lease refreshed
    assert (first["status"], again["status"]) == ("new", "reused")
    deadline = time.monotonic() + 10
    while True:  # the lease ends 2 s after the second page; the sidecar reports it
        sizing = admin.get(f"/v1/pools/{pid}/stats").json()["sizing"]
        if sizing["ended_sessions_last_hour"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sizing["ended_sessions_last_hour"] == 1
    held_s = (again["expires_at"] - (first["expires_at"] - 2000)) / 1000
    assert held_s == pytest.approx(3.0, abs=0.3)
    assert sizing["holding_time_s"] == pytest.approx(held_s, abs=0.01)
    assert sizing["mean_visit_s"] == pytest.approx(held_s - 2, abs=0.01)
    ttls = [r.ttl(k) for k in r.keys(f"dni:{{{pid}}}:m:*")]  # the sidecar's buckets expire too
    assert ttls and all(24 * 3600 < t <= 25 * 3600 for t in ttls)


def test_sizing_uses_the_busiest_15_minutes_of_the_hour(admin, make_pool, r):
    """A burst half an hour ago sizes the pool at its own rate, not at the hour's mean."""
    pool = make_pool(1, session_ttl_s=60)
    pid = pool["id"]
    sec, _ = r.time()
    now_min = sec // 60
    r.hset(f"dni:{{{pid}}}:pool", "created_at", (now_min - 120) * 60_000)  # an old pool
    r.hset(f"dni:{{{pid}}}:m:{now_min - 30}", "new", 900)  # 900 sessions in one minute
    r.hset(f"dni:{{{pid}}}:m:{now_min - 50}", "new", 90)
    r.hset(f"dni:{{{pid}}}:m:{now_min - 300}", mapping={"new": 7, "fallback": 2, "peak": 9})
    r.hset(f"dni:{{{pid}}}:m:{now_min - 1439}", mapping={"new": 1, "peak": 3})
    r.hset(f"dni:{{{pid}}}:m:{now_min - 1440}", mapping={"new": 1000, "peak": 99})  # too old
    day = admin.get(f"/v1/pools/{pid}/stats").json()
    assert day["counts"]["last_day"] == {"new": 998, "reused": 0, "fallback": 2,
                                         "unavailable": 0}
    assert day["counts"]["last_hour"]["new"] == 990
    assert day["peak_concurrent"] == {"last_hour": 0, "last_day": 9}
    sizing = admin.get(f"/v1/pools/{pid}/stats").json()["sizing"]
    assert sizing["arrivals_per_s"] == pytest.approx(900 / 900)  # 900 in 15 minutes
    st = admin.get(f"/v1/pools/{pid}/stats").json()
    hour_s = 59 * 60 + (st["at"] % 60_000) / 1000
    assert st["sizing"]["arrivals_per_s_last_hour"] == pytest.approx(990 / hour_s, rel=1e-2)
    assert sizing["offered_load_erlangs"] == pytest.approx(1.0 * 60)
    assert sizing["recommended_size"] == recommended_size(60.0, 0.01)
