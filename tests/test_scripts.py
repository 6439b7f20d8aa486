"""Each Lua script called directly against a real redis-server."""

from __future__ import annotations

import re
import time

import pytest
import redis
from redis.cluster import key_slot

from broker.keys import Keys
from broker.scripts import load_scripts
from tests.conftest import numbers
from tests.scriptclient import Scripts, check_invariant, snapshot


@pytest.fixture
def s(r: redis.Redis) -> Scripts:
    return Scripts(r)


def test_every_script_has_a_header_and_its_key_count_in_the_name():
    scripts = load_scripts()
    assert set(scripts) >= {"session", "heartbeat", "add_numbers", "pool_stats", "create_pool"}
    for script in scripts.values():
        text = script.body.decode()
        assert text.startswith("--[["), script.name
        header = text.split("]]", 1)[0]
        # each key documented: one by one, or as a range (KEYS[1 .. 1440]) of like keys
        ranges = [(int(a), int(b)) for a, b in re.findall(r"KEYS\[(\d+) \.\. (\d+)\]", header)]
        documented = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", header)}
        documented |= {i for a, b in ranges for i in range(a, b + 1)}
        assert documented == set(range(1, script.numkeys + 1)), script.name
        assert "Returns" in header
        if not ranges:  # a script of named keys uses each of them by its number
            used = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", text)}
            assert used == set(range(1, script.numkeys + 1)), (script.name, used)
        assert "SCAN" not in text and "'KEYS'" not in text


def test_key_count_is_checked():
    with pytest.raises(ValueError):
        load_scripts()["session"].check(["only-one-key"])


def test_new_then_reused_then_other_visitor_gets_other_number(s: Scripts, r):
    s.make_pool("p1", numbers(3), ttl_ms=60_000)
    status, number, sid, exp = s.session("p1", "alice", "sidA", pick=7)
    assert status == "new" and sid == "sidA" and number in numbers(3)
    now_ms = time.time() * 1000
    assert now_ms + 55_000 < exp < now_ms + 65_000
    again = s.session("p1", "alice", "ignored", pick=1)
    assert again[:3] == ("reused", number, "sidA") and again[3] >= exp
    other = s.session("p1", "bob", "sidB")
    assert other[0] == "new" and other[1] != number
    check_invariant(snapshot(r, s.keys, "p1", ["alice", "bob"]), set(numbers(3)))


def test_random_pick_covers_every_available_number(s: Scripts):
    pool = numbers(4)
    s.make_pool("p1", pool)
    got = {s.session("p1", f"v{pick}", f"s{pick}", pick=pick)[1] for pick in range(4)}
    # picks 0..3 on a fresh pool address ranks 0..3: every number exactly once
    assert got == set(pool)


def test_fallback_and_unavailable_hold_nothing(s: Scripts, r):
    s.make_pool("withbackup", numbers(1), fallback="+15550199999")
    s.make_pool("nobackup", numbers(1, start=10))
    assert s.session("withbackup", "a", "s1")[0] == "new"
    assert s.session("withbackup", "b", "s2") == ("fallback", "+15550199999", None, None)
    assert s.session("nobackup", "a", "s3")[0] == "new"
    assert s.session("nobackup", "b", "s4") == ("unavailable", None, None, None)
    assert not r.exists(s.keys.visitor("withbackup", "b"))
    assert s.stats("withbackup")[:2] == (1, 1)


def test_unknown_pool(s: Scripts):
    assert s.session("nope", "a", "s")[0] == "no_pool"
    assert s.heartbeat("nope", "a", "s")[0] == "no_pool"
    assert s.add_numbers("nope", ["+15550100000"]) == -1
    assert s.stats("nope")[:2] == (-1, -1)


def test_heartbeat_extends_and_counts(s: Scripts, r):
    s.make_pool("p1", numbers(2), ttl_ms=60_000)
    _, number, sid, exp = s.session("p1", "a", "sidA")
    time.sleep(0.01)
    status, hb_number, hb_exp = s.heartbeat("p1", "a", sid)
    assert (status, hb_number) == ("alive", number) and hb_exp > exp
    lease = r.hget(s.keys.holders("p1"), number).decode().split("|")
    assert lease == [sid, "a", str(exp - 60_000), str(hb_exp), "1"]
    assert r.hget(s.keys.visitor("p1", "a"), "h") == b"1"
    assert r.pttl(s.keys.visitor("p1", "a")) > 59_000
    s.heartbeat("p1", "a", sid)
    assert r.hget(s.keys.holders("p1"), number).decode().split("|")[4] == "2"


def test_heartbeat_with_wrong_session_id_is_expired_and_changes_nothing(s: Scripts, r):
    s.make_pool("p1", numbers(2))
    _, number, sid, _ = s.session("p1", "a", "sidA")
    assert s.heartbeat("p1", "a", "someone-elses") == ("expired", None, None)
    assert s.heartbeat("p1", "b", sid) == ("expired", None, None)
    assert s.session("p1", "a", "x")[:3] == ("reused", number, sid)


def test_expiry_frees_the_number_and_heartbeat_never_revives(s: Scripts, r):
    s.make_pool("p1", numbers(1), ttl_ms=1000)
    _, number, sid, _ = s.session("p1", "a", "sidA")
    assert s.session("p1", "b", "sidB")[0] == "unavailable"
    time.sleep(1.1)
    assert s.heartbeat("p1", "a", sid) == ("expired", None, None)
    # b takes the freed number; a's late heartbeat cannot steal it back
    assert s.session("p1", "b", "sidB")[:2] == ("new", number)
    assert s.heartbeat("p1", "a", sid)[0] == "expired"
    assert s.session("p1", "a", "sidA2")[0] == "unavailable"


def test_visitor_record_expires_just_before_its_lease(s: Scripts, r):
    """The record is the session: it must be gone before its number can be given out."""
    s.make_pool("p1", numbers(1), ttl_ms=60_000)
    _, number, sid, exp = s.session("p1", "a", "sidA")
    expire_at = r.pexpiretime(s.keys.visitor("p1", "a"))
    assert expire_at == exp - 1 == r.zscore(s.keys.numbers("p1"), number) - 1
    time.sleep(0.002)
    _, _, exp2 = s.heartbeat("p1", "a", sid)
    assert r.pexpiretime(s.keys.visitor("p1", "a")) == exp2 - 1
    # the refresh writes the lease's end to the holders entry, not to the sorted set,
    # whose score stays a lower bound (session-5.lua)
    assert r.hget(s.keys.holders("p1"), number).decode().split("|")[3] == str(exp2)
    assert r.zscore(s.keys.numbers("p1"), number) == exp < exp2


def test_a_refreshed_lease_keeps_its_number_past_its_first_score(s: Scripts, r):
    s.make_pool("p1", numbers(1), ttl_ms=1000)
    _, number, sid, exp = s.session("p1", "a", "sidA")
    time.sleep(0.7)
    _, _, exp2 = s.heartbeat("p1", "a", sid)
    time.sleep(0.35)  # past the score written at assignment, inside the refreshed lease
    assert s.session("p1", "b", "sidB")[0] == "unavailable"
    assert r.zscore(s.keys.numbers("p1"), number) == exp2  # moved to the lease's end
    assert s.session("p1", "a", "x")[:3] == ("reused", number, sid)
    _, _, exp3, = s.heartbeat("p1", "a", sid)
    time.sleep((exp3 - exp2) / 1000 + 1.05)
    assert s.session("p1", "b", "sidB")[:2] == ("new", number)
    (ended,) = _ended(r, s, "p1")
    assert ended["session_id"] == sid and ended["ended_at"] == str(exp3)
    assert ended["heartbeats"] == "2"


@pytest.mark.parametrize("pick", [0, 1, 2, 3, 4, 12345])
def test_assignment_finds_the_free_number_among_refreshed_ones(s: Scripts, r, pick):
    pool = numbers(5)
    s.make_pool("p1", pool, ttl_ms=1000)
    held = [s.session("p1", f"v{i}", f"s{i}", pick=0) for i in range(4)]
    free = (set(pool) - {h[1] for h in held}).pop()
    r.zadd(s.keys.numbers("p1"), {free: 0})
    time.sleep(0.7)
    for i, h in enumerate(held):
        s.heartbeat("p1", f"v{i}", h[2])
    time.sleep(0.35)  # every score has passed; only `free` is free
    assert s.session("p1", "new", "sidN", pick=pick)[:2] == ("new", free)
    assert s.session("p1", "late", "sidL", pick=pick)[0] == "unavailable"
    assert _ended(r, s, "p1") == []  # nobody's session ended


def test_lru_policy_gives_the_number_free_longest(s: Scripts, r):
    pool = numbers(3)
    s.make_pool("p1", pool, ttl_ms=60_000, policy="lru")
    # free-from times: make number 2 the oldest, then 0, then 1
    r.zadd(s.keys.numbers("p1"), {pool[0]: 200, pool[1]: 300, pool[2]: 100})
    order = [s.session("p1", f"v{i}", f"s{i}", pick=999)[1] for i in range(3)]
    assert order == [pool[2], pool[0], pool[1]]


@pytest.mark.parametrize("refreshed", [False, True])
def test_a_number_freed_within_the_grace_period_waits_while_others_are_free(
        s: Scripts, r, refreshed):
    """A's session just ended on a number: with the call grace period given, the next
    visitor gets one of the numbers free for longer, whatever the pick (a call from A is
    then not credited to them); without it, A's number can be picked. Also when A's lease
    was refreshed: its score (the first end) is then older than the grace period, its
    real end is not, and that is what counts."""
    pool = numbers(3)
    # refreshed: a 1 s lease beaten at 0.5 s ends at 1.5 s, its score says 1.0 s; asked
    # at ~1.65 s with a 0.5 s grace period the score looks long free, the end does not
    ttl, beat_at, ask_at, grace = (1000, 0.5, 1.65, 500) if refreshed else (300, 0, 0.45, 60_000)

    def after_a(pool_id: str) -> str:
        s.make_pool(pool_id, pool, ttl_ms=ttl)
        _, number, sid, _ = s.session(pool_id, "a", "sidA", pick=2)
        if beat_at:
            time.sleep(beat_at)
            assert s.heartbeat(pool_id, "a", sid)[0] == "alive"
        time.sleep(ask_at - beat_at)  # A's lease has ended
        return number

    for pick in range(3):
        a_number = after_a(f"g{pick}")
        got = s.session(f"g{pick}", "b", "sidB", pick=pick, grace_ms=grace)
        assert got[0] == "new" and got[1] != a_number, (pick, got)
    if not refreshed:
        picked = set()
        for pick in range(3):
            a_number = after_a(f"n{pick}")
            picked.add(s.session(f"n{pick}", "b", "sidB", pick=pick)[1] == a_number)
        assert picked == {True, False}  # without a grace period A's number is a pick


def test_add_numbers_is_idempotent_and_keeps_a_held_number_held(s: Scripts, r):
    s.make_pool("p1", numbers(1))
    _, number, sid, _ = s.session("p1", "a", "sidA")
    assert s.add_numbers("p1", [number, "+15550100077"]) == 1
    assert s.session("p1", "a", "x")[:3] == ("reused", number, sid)
    assert s.session("p1", "b", "sidB")[:2] == ("new", "+15550100077")
    assert s.stats("p1")[:2] == (2, 2)


def test_new_session_writes_record_and_outbox_in_the_same_step(s: Scripts, r):
    s.make_pool("p1", numbers(1))
    attribution = '{"utm_source":"google","gclid":"abc"}'
    _, number, sid, exp = s.session("p1", "a", "sidA", ip="203.0.113.9", ua="UA/1",
                                    attribution=attribution)
    record = {k.decode(): v.decode() for k, v in r.hgetall(s.keys.visitor("p1", "a")).items()}
    started = record["t"]
    assert record == {"s": sid, "n": number, "t": started, "h": "0"}
    holders = r.hgetall(s.keys.holders("p1"))
    source = f"203.0.113.9\nUA/1\n{attribution}"
    assert holders[number.encode()].decode() == f"{sid}|a|{started}|{exp}|0"
    assert holders[f"a:{number}".encode()].decode() == source
    assert int(started) == exp - 60_000
    entries = r.xrange(s.keys.outbox("p1"))
    assert len(entries) == 1
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields == {"event": "session.started", "pool_id": "p1", "session_id": sid,
                      "visitor_id": "a", "number": number, "started_at": started,
                      "expires_at": str(exp), "source": source}
    # reuse refreshes without a second outbox entry or a change of source (first touch)
    s.session("p1", "a", "x", attribution='{"utm_source":"bing"}')
    assert r.xlen(s.keys.outbox("p1")) == 1
    assert r.hget(s.keys.holders("p1"), f"a:{number}").decode() == source


def _ended(r, s: Scripts, pool: str) -> list[dict]:
    out = []
    for _, raw in r.xrange(s.keys.outbox(pool)):
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields["event"] == "session.ended":
            out.append(fields)
    return out


def test_end_sessions_reports_each_ended_lease_once(s: Scripts, r):
    s.make_pool("p1", numbers(2), ttl_ms=1000)
    _, n_a, sid_a, _ = s.session("p1", "a", "sidA", pick=0)
    _, n_b, sid_b, exp_b = s.session("p1", "b", "sidB", pick=0)
    s.heartbeat("p1", "b", sid_b)
    s.heartbeat("p1", "b", sid_b)
    keys = s.end_keys("p1")
    assert s.run("end_sessions", keys, ["p1", 100]) == [0, 0]  # nothing ended yet
    time.sleep(1.1)
    assert s.run("end_sessions", keys, ["p1", 100]) == [2, 0]
    assert s.run("end_sessions", keys, ["p1", 100]) == [0, 0]  # never twice
    ended = {e["session_id"]: e for e in _ended(r, s, "p1")}
    assert set(ended) == {sid_a, sid_b}
    b = ended[sid_b]
    assert b["heartbeats"] == "2" and b["visitor_id"] == "b" and b["number"] == n_b
    assert int(b["ended_at"]) - int(b["started_at"]) == int(b["duration_ms"]) >= 1000
    # reassigning a reported number does not report its old lease again
    s.session("p1", "c", "sidC")
    assert len(_ended(r, s, "p1")) == 2


def test_end_sessions_writes_nothing_for_a_pool_where_nothing_passed(s: Scripts, r):
    """The sidecar calls it for every pool every pass: an idle pool must cost no write
    (a write per pool per pass was 1.3 MB/s of AOF with 10,000 idle pools)."""
    s.make_pool("p1", numbers(2), ttl_ms=60_000)
    s.session("p1", "a", "sidA", pick=0)
    keys = s.end_keys("p1")
    assert s.run("end_sessions", keys, ["p1", 100]) == [0, 0]
    before = r.hgetall("dni:{p1}:pool")
    time.sleep(0.01)
    for _ in range(3):
        assert s.run("end_sessions", keys, ["p1", 100]) == [0, 0]
    assert r.hgetall("dni:{p1}:pool") == before


def test_end_sessions_moves_a_refreshed_lease_and_reports_its_real_end(s: Scripts, r):
    s.make_pool("p1", numbers(1), ttl_ms=1000, policy="lru")
    _, number, sid, exp = s.session("p1", "a", "sidA")
    time.sleep(0.7)
    _, _, exp2 = s.heartbeat("p1", "a", sid)
    keys = s.end_keys("p1")
    time.sleep(0.35)  # the first score passed; the lease holds
    assert s.run("end_sessions", keys, ["p1", 100]) == [0, 0]
    assert r.zscore(s.keys.numbers("p1"), number) == exp2  # moved to the lease's end
    assert s.stats("p1")[:2] == (1, 1)
    assert s.session("p1", "a", "x")[:3] == ("reused", number, sid)  # refreshed again
    time.sleep(1.05)
    assert s.run("end_sessions", keys, ["p1", 100])[0] == 1
    (ended,) = _ended(r, s, "p1")
    lease_end = int(r.hget(s.keys.holders("p1"), number).decode().split("|")[3])
    assert ended["ended_at"] == str(lease_end) and lease_end > exp2
    assert ended["heartbeats"] == "1"
    assert r.zscore(s.keys.numbers("p1"), number) == lease_end  # free since then (lru)


def test_removing_a_refreshed_number_ends_its_session_now(s: Scripts, r):
    s.make_pool("p1", numbers(2), ttl_ms=1000)
    _, number, sid, exp = s.session("p1", "a", "sidA", pick=0)
    time.sleep(0.7)
    s.heartbeat("p1", "a", sid)
    time.sleep(0.35)  # past the first score; the refreshed lease holds
    before = int(time.time() * 1000)
    assert s.remove_number("p1", number) == 1
    (ended,) = _ended(r, s, "p1")
    assert ended["reason"] == "number_removed" and ended["heartbeats"] == "1"
    assert int(ended["ended_at"]) >= before > exp  # now, not the lagging score
    assert s.heartbeat("p1", "a", sid)[0] == "expired"
    assert not r.hexists(s.keys.holders("p1"), number)


def test_reactivating_a_refreshed_number_keeps_it_held_to_the_lease_end(s: Scripts, r):
    s.make_pool("p1", numbers(1), ttl_ms=1000)
    _, number, sid, exp = s.session("p1", "a", "sidA")
    assert s.deactivate_number("p1", number) == 1
    time.sleep(0.7)
    _, _, exp2 = s.heartbeat("p1", "a", sid)  # refreshed while inactive
    time.sleep(0.35)
    assert s.activate_number("p1", number) == 1
    assert r.zscore(s.keys.numbers("p1"), number) == exp2  # held to its real end
    assert s.session("p1", "b", "sidB")[0] == "unavailable"
    time.sleep((exp2 - time.time() * 1000) / 1000 + 0.05)
    assert s.session("p1", "b", "sidB")[:2] == ("new", number)
    (ended,) = _ended(r, s, "p1")
    assert ended["ended_at"] == str(exp2)


def test_a_session_on_a_deactivated_number_is_reported_when_it_ends(s: Scripts, r):
    """The sidecar walks the inactive set too: a session that goes on on a deactivated
    number counts as live, is moved if refreshed, and is reported once when it ends, with
    or without reactivation in between."""
    s.make_pool("p1", numbers(2), ttl_ms=1000)
    _, number, sid, exp = s.session("p1", "a", "sidA", pick=0)
    assert s.deactivate_number("p1", number) == 1
    assert r.zscore(s.keys.inactive("p1"), number) == exp  # scored by its lease's end
    assert s.stats("p1")[:2] == (1, 1)  # one active number; the session is live
    time.sleep(0.7)
    _, _, exp2 = s.heartbeat("p1", "a", sid)
    time.sleep(0.35)  # past its first end; refreshed
    assert s.run("end_sessions", s.end_keys("p1"), ["p1", 100]) == [0, 0]
    assert r.zscore(s.keys.inactive("p1"), number) == exp2
    assert s.stats("p1")[:2] == (1, 1)
    time.sleep((exp2 - time.time() * 1000) / 1000 + 0.05)
    assert s.run("end_sessions", s.end_keys("p1"), ["p1", 100]) == [1, 0]
    (ended,) = _ended(r, s, "p1")
    assert (ended["session_id"], ended["ended_at"]) == (sid, str(exp2))
    assert s.stats("p1")[:2] == (1, 0)
    assert s.activate_number("p1", number) == 1
    assert s.run("end_sessions", s.end_keys("p1"), ["p1", 100]) == [0, 0]
    assert len(_ended(r, s, "p1")) == 1  # once


def test_deactivating_or_reactivating_reports_an_ended_lease_the_sidecar_has_not(s: Scripts, r):
    s.make_pool("p1", numbers(2), ttl_ms=300)
    _, n_a, sid_a, exp_a = s.session("p1", "a", "sidA", pick=0)
    _, n_b, sid_b, exp_b = s.session("p1", "b", "sidB", pick=0)
    assert s.deactivate_number("p1", n_b) == 1  # b's session goes on
    time.sleep(0.35)  # both leases ended; no sidecar ran
    assert s.deactivate_number("p1", n_a) == 1  # reports a's end now
    assert [e["session_id"] for e in _ended(r, s, "p1")] == [sid_a]
    assert s.activate_number("p1", n_b) == 1  # reports b's end now
    ended = {e["session_id"]: e["ended_at"] for e in _ended(r, s, "p1")}
    assert ended == {sid_a: str(exp_a), sid_b: str(exp_b)}
    assert r.zscore(s.keys.numbers("p1"), n_b) == exp_b  # free since its lease's end
    s.activate_number("p1", n_a)
    assert s.run("end_sessions", s.end_keys("p1"), ["p1", 100]) == [0, 0]
    assert len(_ended(r, s, "p1")) == 2


def test_a_shorter_session_length_never_shortens_a_lease(s: Scripts, r):
    """Refreshes after the pool's session length was cut keep the lease's later end, so
    the number's score stays a lower bound: the number is free, and counted free, when
    its session ends."""
    s.make_pool("p1", numbers(1), ttl_ms=1500)
    _, number, sid, exp = s.session("p1", "a", "sidA")
    r.hset(s.keys.pool("p1"), "ttl_ms", 300)  # what update_pool writes
    assert s.session("p1", "a", "x")[3] == exp  # reused: still ends at exp
    assert s.heartbeat("p1", "a", sid)[2] == exp
    time.sleep((exp - time.time() * 1000) / 1000 - 0.2)  # now + 300 ms passes exp
    _, _, exp2 = s.heartbeat("p1", "a", sid)
    assert exp2 > exp
    assert int(r.hget(s.keys.holders("p1"), number).decode().split("|")[3]) == exp2
    time.sleep((exp2 - time.time() * 1000) / 1000 + 0.05)
    assert s.run("end_sessions", s.end_keys("p1"), ["p1", 100]) == [1, 0]
    assert s.stats("p1")[:2] == (1, 0)
    assert s.session("p1", "b", "sidB")[:2] == ("new", number)


def test_reassignment_reports_the_previous_lease_if_the_sidecar_has_not(s: Scripts, r):
    s.make_pool("p1", numbers(1), ttl_ms=1000)
    _, number, sid_a, exp_a = s.session("p1", "a", "sidA")
    time.sleep(1.05)
    _, number_b, sid_b, _ = s.session("p1", "b", "sidB")
    assert number_b == number
    (ended,) = _ended(r, s, "p1")
    assert ended["session_id"] == sid_a and ended["ended_at"] == str(exp_a)
    keys = s.end_keys("p1")
    assert s.run("end_sessions", keys, ["p1", 100])[0] == 0  # b is live, a already reported


def test_end_sessions_batches_do_not_skip_leases(s: Scripts, r):
    s.make_pool("p1", numbers(7), ttl_ms=1000)
    for i in range(7):
        s.session("p1", f"v{i}", f"s{i}", pick=0)
    time.sleep(1.1)
    keys = s.end_keys("p1")
    total, calls = 0, 0
    while True:
        reported, more = s.run("end_sessions", keys, ["p1", 3])
        total, calls = total + reported, calls + 1
        if not more:
            break
        assert calls < 20
    assert total == 7 and len({e["session_id"] for e in _ended(r, s, "p1")}) == 7


def test_end_sessions_resumes_after_its_last_number_when_one_leaves(s: Scripts, r):
    """Between two batches the last number read is reassigned (it leaves its score): the
    walk must not skip the next number, whose lease ended unreported."""
    s.make_pool("p1", numbers(3), ttl_ms=300)
    for i in range(3):
        s.session("p1", f"v{i}", f"s{i}", pick=0)
    time.sleep(0.35)
    keys = s.end_keys("p1")
    assert s.run("end_sessions", keys, ["p1", 1]) == [1, 1]
    (first,) = _ended(r, s, "p1")
    # the number just read gets a new session before the sidecar's next batch
    read = first["number"]
    r.zadd(s.keys.numbers("p1"), {read: 0})  # make it the only candidate...
    s.run("session", s.keys.session_keys("p1", "w"),
          ["sW", 0, "w", "p1", "127.0.0.1\nua\n{}"])  # ...so the lowest-ranked is taken
    assert r.hget(s.keys.holders("p1"), read).decode().startswith("sW|")
    total = 1
    while True:
        reported, more = s.run("end_sessions", keys, ["p1", 1])
        total += reported
        if not more:
            break
    assert total == 3
    assert {e["session_id"] for e in _ended(r, s, "p1")} == {"s0", "s1", "s2"}


def test_a_count_flush_sent_twice_is_added_once(s: Scripts, r):
    """The connection dropped with a flush in flight and the client sent it again: the
    flush's marker makes the second one add nothing."""
    s.make_pool("p1", numbers(2))
    k = s.keys
    keys = [k.pool("p1"), k.numbers("p1"), k.minute("p1", 1), k.flush_marker("p1", "proc1"),
            k.blocked("p1", 1)]
    args = [3600, 80, 3_600_000, "flush1", 2, "new", 7, "alive", 2, "vA", "vB", "vA"]
    assert s.run("record_counts", keys, args)[:2] == [0, 2]
    s.run("record_counts", keys, args)  # the same flush again
    assert r.hgetall(k.minute("p1", 1)) == {b"new": b"7", b"alive": b"2", b"peak": b"0"}
    assert r.pfcount(k.blocked("p1", 1)) == 2  # distinct visitors turned away
    args[3] = "flush2"
    s.run("record_counts", keys, args)  # the process's next flush
    assert r.hget(k.minute("p1", 1), "new") == b"14"
    # another process's flush, whatever its id, is its own
    s.run("record_counts", keys[:3] + [k.flush_marker("p1", "proc2"), keys[4]], args)
    assert r.hget(k.minute("p1", 1), "new") == b"21"
    # one marker per pool and process, not per flush: they do not pile up under traffic
    assert sorted(r.keys(k.flush_marker("p1", "*"))) == [
        k.flush_marker("p1", p).encode() for p in ("proc1", "proc2")]
    assert 0 < r.ttl(k.flush_marker("p1", "proc1")) <= 60


def test_all_keys_of_a_pool_share_one_cluster_slot():
    k = Keys("dni")
    for pool_id in ("p1", "abc-DEF_123", "x" * 64):
        for visitor in ("v", "a{b}c", "}{", "visitor:with:colons"):
            slots = {key_slot(key.encode()) for key in k.session_keys(pool_id, visitor)}
            slots |= {key_slot(key.encode()) for key in k.heartbeat_keys(pool_id, visitor)}
            assert len(slots) == 1, (pool_id, visitor)
        assert key_slot(k.pool(pool_id).encode()) == key_slot(pool_id.encode())


def test_scripts_run_again_after_script_flush(s: Scripts, r):
    s.make_pool("p1", numbers(2))
    assert s.session("p1", "a", "sidA")[0] == "new"
    r.script_flush()
    assert s.session("p1", "a", "x")[0] == "reused"  # NOSCRIPT -> EVAL, same result
