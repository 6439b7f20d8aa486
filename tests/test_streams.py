"""Durability of the session records and the reference consumer (`dni events tail`)."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import httpx
import pytest
import redis

from broker.events import Consumer
from broker.engine import Engine
from broker.keys import Keys
from broker.redisconn import PipelinedRedis
from broker.scripts import load_scripts
from broker.sidecar import NotLeader, Sidecar
from tests.conftest import (ADMIN_TOKEN, ROOT, BrokerProcess, free_port, numbers,
                            start_redis, stop)


@pytest.fixture
def own_redis() -> Iterator[tuple[str, redis.Redis]]:
    """A Redis of the test's own: no other broker's sidecar works on it."""
    tmp = tempfile.mkdtemp(prefix="dni-test-kill-")
    port = free_port()
    proc = start_redis(tmp, port)
    client = redis.Redis(port=port)
    yield f"redis://127.0.0.1:{port}/0", client
    client.close()
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_broker_killed_mid_load_loses_no_session(own_redis):
    """SIGKILL a broker while it answers; after a sidecar pass, every session that got a
    `new` answer is in dni:sessions exactly once."""
    redis_server, r = own_redis
    b = BrokerProcess(redis_server, env={"DNI_SIDECAR": "0"}).start()
    with httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        pool = admin.post("/v1/pools", json={"name": "k", "numbers": numbers(5000)}).json()
    new_sessions: set[str] = set()
    errors = 0

    async def load() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=b.url, limits=limits, timeout=5) as client:
            async def worker(w: int) -> None:
                nonlocal errors
                for i in range(10_000):
                    try:
                        res = await client.post("/v1/dni/session", json={
                            "pool_id": pool["id"], "visitor_id": f"k{w}-{i}",
                            "utm_source": "kill-test"})
                    except httpx.TransportError:
                        errors += 1
                        return
                    if res.json()["status"] == "new":
                        new_sessions.add(res.json()["session_id"])

            async def killer() -> None:
                while len(new_sessions) < 500:
                    await asyncio.sleep(0.01)
                os.kill(b.proc.pid, signal.SIGKILL)

            await asyncio.gather(killer(), *(worker(w) for w in range(64)))

    asyncio.run(load())
    b.proc.wait(10)
    assert errors > 0 and len(new_sessions) >= 500  # killed while answering
    assert not r.exists("dni:sessions")  # its sidecar was off: all still in the outbox
    env = dict(os.environ, DNI_REDIS_URL=redis_server)
    subprocess.run([sys.executable, "-m", "broker.cli", "sidecar", "--once"], env=env,
                   cwd=ROOT, check=True, capture_output=True, timeout=60)
    started = [fields[b"session_id"].decode() for _, fields in r.xrange("dni:sessions")
               if fields[b"event"] == b"session.started"]
    assert len(started) == len(set(started))  # no duplicates
    assert new_sessions <= set(started)  # nothing answered `new` is missing
    # and nothing is in the stream that no one could have been told about: every
    # entry is a session whose script ran to its end
    assert len(set(started)) - len(new_sessions) <= 64
    assert r.xlen(f"dni:{{{pool['id']}}}:outbox") == 0


def _fill(r: redis.Redis, stream: str, count: int) -> list[bytes]:
    return [r.xadd(stream, {"event": "session.started", "session_id": f"s{i}"})
            for i in range(count)]


def test_the_dead_letter_stream_keeps_the_newest_only(r: redis.Redis):
    stream = "dni:sessions"
    ids = _fill(r, stream, 3)
    r.xgroup_create(stream, "crm", id="0")
    r.xreadgroup("crm", "a", {stream: ">"}, count=10)  # delivered once, never acknowledged
    r.xclaim(stream, "crm", "crashy", 0, ids)  # and again: every entry is poison
    time.sleep(0.06)
    Consumer(r, stream, "crm", "b", claim_idle_ms=50, max_deliveries=1, out=io.StringIO(),
             dead_maxlen=2).run(follow=False)
    assert [e[1][b"dead_id"] for e in r.xrange("dni:sessions:dead")] == ids[1:]


def test_crashed_consumer_entries_go_to_another_and_poison_to_dead_letters(r: redis.Redis):
    stream = "dni:sessions"
    ids = _fill(r, stream, 5)
    out_a = io.StringIO()
    a = Consumer(r, stream, "billing", "a", claim_idle_ms=50, max_deliveries=3, out=out_a)
    # consumer "a" reads everything and dies before acknowledging (no _handle, no XACK)
    got = r.xreadgroup("billing", "a", {stream: ">"}, count=10)
    assert len(got[0][1]) == 5
    del a
    # the first entry is poison: every consumer that takes it crashes; it is delivered
    # again and again (each XCLAIM counts one more delivery)
    for _ in range(3):
        r.xclaim(stream, "billing", "crashy", 0, [ids[0]])
    time.sleep(0.06)
    out_b = io.StringIO()
    b = Consumer(r, stream, "billing", "b", claim_idle_ms=50, max_deliveries=3, out=out_b)
    printed = b.run(follow=False)
    lines = [json.loads(line) for line in out_b.getvalue().splitlines()]
    assert printed == 4 and [x["session_id"] for x in lines] == ["s1", "s2", "s3", "s4"]
    dead = r.xrange("dni:sessions:dead")
    assert len(dead) == 1 and dead[0][1][b"session_id"] == b"s0"
    assert dead[0][1][b"dead_id"] == ids[0] and int(dead[0][1][b"deliveries"]) > 3
    assert r.xpending(stream, "billing")["pending"] == 0  # all acknowledged
    # new entries are read too, and nothing is printed twice
    _fill(r, stream, 1)
    out_c = io.StringIO()
    Consumer(r, stream, "billing", "b", 50, 3, out_c).run(follow=False)
    assert [json.loads(x)["session_id"] for x in out_c.getvalue().splitlines()] == ["s0"]


def test_a_restarted_consumer_takes_its_own_pending_entries_first(r: redis.Redis):
    """Consumer c1 died mid-batch (3 delivered, unacknowledged); started again under the
    same name, it handles those first, in order, then the new ones."""
    stream = "dni:sessions"
    _fill(r, stream, 3)
    Consumer(r, stream, "crm", "c1", out=io.StringIO())  # creates the group
    assert len(r.xreadgroup("crm", "c1", {stream: ">"}, count=10)[0][1]) == 3
    r.xadd(stream, {"event": "session.started", "session_id": "s3"})
    out = io.StringIO()
    Consumer(r, stream, "crm", "c1", claim_idle_ms=60_000, out=out).run(follow=False)
    assert [json.loads(x)["session_id"] for x in out.getvalue().splitlines()] == [
        "s0", "s1", "s2", "s3"]
    assert r.xpending(stream, "crm")["pending"] == 0
    # pending entries trimmed away meanwhile are acknowledged, not printed empty
    _fill(r, stream, 3)
    assert len(r.xreadgroup("crm", "c1", {stream: ">"}, count=10)[0][1]) == 3
    r.xtrim(stream, maxlen=1, approximate=False)
    out = io.StringIO()
    Consumer(r, stream, "crm", "c1", claim_idle_ms=60_000, out=out).run(follow=False)
    assert [json.loads(x)["session_id"] for x in out.getvalue().splitlines()] == ["s2"]
    assert r.xpending(stream, "crm")["pending"] == 0


def test_events_tail_follows_quietly_and_stops_quietly(redis_server, r: redis.Redis):
    """`--follow` waits through a quiet stream (longer than a client's default socket
    timeout) and prints what comes; `| head` ends it without a traceback; a bad
    --max-deliveries is a usage error."""
    env = dict(os.environ, DNI_REDIS_URL=redis_server)
    cmd = [sys.executable, "-m", "broker.cli", "events", "tail"]
    follow = subprocess.Popen([*cmd, "--follow"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6.5)
        assert follow.poll() is None, follow.communicate()
        r.xadd("dni:sessions", {"event": "session.started", "session_id": "late"})
        line = follow.stdout.readline()
        assert json.loads(line)["session_id"] == "late"
    finally:
        follow.terminate()
        follow.communicate(timeout=10)
    _fill(r, "dni:sessions", 3000)
    piped = subprocess.run(f"{sys.executable} -m broker.cli events tail | head -1",
                           shell=True, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert len(piped.stdout.splitlines()) == 1 and piped.stderr == "", piped.stderr
    bad = subprocess.run([*cmd, "--group", "g", "--consumer", "c", "--max-deliveries", "0"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--max-deliveries" in bad.stderr


def test_events_tail_cli_prints_json_lines(redis_server, r: redis.Redis):
    _fill(r, "dni:calls", 2)
    env = dict(os.environ, DNI_REDIS_URL=redis_server)
    out = subprocess.run([sys.executable, "-m", "broker.cli", "events", "tail", "--stream",
                          "calls"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [x["session_id"] for x in rows] == ["s0", "s1"] and rows[0]["stream"] == "dni:calls"
    grouped = subprocess.run([sys.executable, "-m", "broker.cli", "events", "tail", "--stream",
                              "calls", "--group", "g", "--consumer", "c1"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert len(grouped.splitlines()) == 2
    assert r.xpending("dni:calls", "g")["pending"] == 0


def test_retention_trims_and_counts_unacknowledged_drops(redis_server, r: redis.Redis):
    _fill(r, "dni:sessions", 30)
    r.xgroup_create("dni:sessions", "slow", id="0")
    r.xreadgroup("slow", "c", {"dni:sessions": ">"}, count=5)  # 5 pending, 25 undelivered

    async def run() -> None:
        client = PipelinedRedis(redis_server)
        sidecar = Sidecar(client, Keys("dni"), load_scripts(), maxlen=10)
        await sidecar.check_retention("dni:sessions")
        await client.close()

    asyncio.run(run())
    assert r.xlen("dni:sessions") == 10
    stats = {k.decode(): int(v) for k, v in r.hgetall("dni:sidecar:stats").items()}
    # the 20 dropped: 5 delivered and pending, 15 never delivered
    assert stats["trimmed"] == 20 and stats["trim_dropped_pending"] == 20
    # the group catches up (the 5 pending ids stay pending, their entries gone); a later
    # trim of entries it has read counts nothing more
    r.xreadgroup("slow", "c", {"dni:sessions": ">"}, count=100)
    r.xack("dni:sessions", "slow", *[i for i, _ in r.xrange("dni:sessions")])
    _fill(r, "dni:sessions", 4)
    r.xack("dni:sessions", "slow", *[i for i, _ in r.xreadgroup(
        "slow", "c", {"dni:sessions": ">"}, count=100)[0][1]])
    asyncio.run(run())
    stats = {k.decode(): int(v) for k, v in r.hgetall("dni:sidecar:stats").items()}
    assert stats["trimmed"] == 24 and stats["trim_dropped_pending"] == 20


def test_streams_endpoint_reports_lengths_groups_and_counters(admin, r: redis.Redis):
    _fill(r, "dni:sessions", 3)
    r.xgroup_create("dni:sessions", "billing", id="0")
    r.xreadgroup("billing", "c", {"dni:sessions": ">"}, count=2)
    r.hset("dni:sidecar:stats", mapping={"copied": 3, "trim_dropped_pending": 0})
    got = admin.get("/v1/streams").json()
    sessions = got["streams"]["dni:sessions"]
    assert sessions["length"] == 3 and sessions["dead_letters"] == 0
    assert sessions["groups"] == [{"name": "billing", "pending": 2, "consumers": 1,
                                   "last_delivered_id": sessions["groups"][0]["last_delivered_id"]}]
    assert got["streams"]["dni:calls"]["length"] == 0
    assert got["sidecar"]["copied"] >= 3 and got["retention_maxlen"] == 1_000_000


def test_several_sidecars_elect_one_leader(own_redis):
    redis_server, r = own_redis  # no other broker's sidecar leads here
    async def run() -> list[bool]:
        client = PipelinedRedis(redis_server)
        cars = [Sidecar(client, Keys("dni"), load_scripts()) for _ in range(3)]
        first = [await c.lead() for c in cars]
        again = [await c.lead() for c in cars]
        await client.close()
        return first + again

    votes = asyncio.run(run())
    assert votes == [True, False, False, True, False, False]


async def _with_pools(url: str, *pool_ids: str) -> tuple[PipelinedRedis, dict]:
    """A client with the scripts loaded, and bare pools the sidecar walks."""
    keys = Keys("dni")
    client = PipelinedRedis(url)
    scripts = load_scripts()
    await client.load_scripts(list(scripts.values()))
    for pool_id in pool_ids:
        await client.evalsha(scripts["create_pool"], [keys.pool(pool_id), keys.numbers(pool_id)],
                             [1, "ttl_ms", 60000])
        await client.execute("SADD", keys.pool_index(), pool_id)
    return client, scripts


def _started(r: redis.Redis, pool_id: str, count: int, fmt: str = "s{}") -> None:
    """`count` session.started entries in the pool's outbox."""
    for i in range(count):
        r.xadd(Keys("dni").outbox(pool_id), {"event": "session.started", "pool_id": pool_id,
                                             "session_id": fmt.format(i),
                                             "source": b"\nua\n{}"})


def test_an_undecodable_or_failing_pool_does_not_stop_the_sidecar(own_redis):
    """An outbox entry that is not UTF-8 is copied with replacement characters, and a
    pool whose step fails is logged and skipped: the other pools' entries still move."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")

    async def run() -> dict:
        client, scripts = await _with_pools(redis_server, "a", "b", "c")
        car = Sidecar(client, keys, scripts)
        r.xadd(keys.outbox("a"), {"event": "session.started", "pool_id": "a",
                                  "source": b"203.0.113.7\nMozilla \xff\xfe\n{}"})
        r.set(keys.outbox("b"), "not a stream")  # XRANGE on it fails
        r.xadd(keys.outbox("c"), {"event": "session.started", "pool_id": "c",
                                  "source": b"\nua\n{}"})
        done = await car.cycle()
        await client.close()
        return done

    done = asyncio.run(run())
    copied = {f[b"pool_id"]: f for _, f in r.xrange(keys.sessions_stream())}
    assert done["copied"] == 2 and set(copied) == {b"a", b"c"}
    assert copied[b"a"][b"user_agent"].decode() == "Mozilla \ufffd\ufffd"
    assert r.xlen(keys.outbox("a")) == 0 and r.xlen(keys.outbox("c")) == 0


def test_a_pass_over_many_pools_copies_each_outbox_in_order(own_redis):
    """Pools are worked on a few at a time: every pool's entries are copied, each pool's
    in their order, none twice."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")
    pools = [f"p{i:02d}" for i in range(40)]  # more than one group of POOLS_AT_ONCE
    for pool_id in pools:
        _started(r, pool_id, 3, "outbox-{}")

    async def run() -> dict:
        client, scripts = await _with_pools(redis_server, *pools)
        engine = Engine(client, keys, scripts)
        for i, pool_id in enumerate(pools):  # and a 50 ms session each, ended by the pass
            await engine.add_numbers(pool_id, [f"+1555010{i:04d}"])
            r.hset(keys.pool(pool_id), "ttl_ms", 50)
            await engine.session(pool_id, "v", "203.0.113.7\nua\n{}")
        await asyncio.sleep(0.1)
        done = await Sidecar(client, keys, scripts).cycle()
        await client.close()
        return done

    # the pass's totals too (the pools worked on alongside each other add to them)
    assert asyncio.run(run()) == {"copied": 40 * 5, "ended_reported": 40}
    copied: dict[bytes, list[bytes]] = {}
    for _, f in r.xrange(keys.sessions_stream()):
        if f[b"session_id"].startswith(b"outbox-"):
            copied.setdefault(f[b"pool_id"], []).append(f[b"session_id"])
    assert sorted(copied) == [p.encode() for p in pools]
    assert all(ids == sorted(ids) and len(set(ids)) == 3 for ids in copied.values())
    assert all(r.xlen(keys.outbox(p)) == 0 for p in pools)


def test_copying_past_the_retention_warns_about_unread_entries(own_redis):
    """The sidecar's own copying overflows the retention: the trim that follows counts
    the entries a consumer group had not read (the copy itself does not trim them away
    unseen)."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")
    r.xgroup_create(keys.sessions_stream(), "slow", id="0", mkstream=True)
    # 900 entries, retention 200: far over twice the retention, where a capped write
    # (MAXLEN ~ 400) would have dropped entries unseen
    _started(r, "a", 900)

    async def run() -> dict:
        client, scripts = await _with_pools(redis_server, "a")
        done = await Sidecar(client, keys, scripts, maxlen=200).cycle()
        await client.close()
        return done

    assert asyncio.run(run())["copied"] == 900
    assert r.xlen(keys.sessions_stream()) == 200
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.sidecar_stats()).items()}
    assert stats["trimmed"] == 700 and stats["trim_dropped_pending"] == 700


def test_a_backlog_in_many_pools_counts_each_trimmed_entry_once(own_redis):
    """Pools are worked on a few at a time: the retention trim that a backlog calls for
    is counted once, not once per pool that copied alongside."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")
    r.xgroup_create(keys.sessions_stream(), "slow", id="0", mkstream=True)
    pools = [f"p{i:02d}" for i in range(16)]
    for pool_id in pools:
        _started(r, pool_id, 300)

    async def run() -> dict:
        client, scripts = await _with_pools(redis_server, *pools)
        done = await Sidecar(client, keys, scripts, maxlen=200).cycle()
        await client.close()
        return done

    assert asyncio.run(run())["copied"] == 4800
    assert r.xlen(keys.sessions_stream()) == 200
    stats = {k.decode(): int(v) for k, v in r.hgetall(keys.sidecar_stats()).items()}
    assert stats["trimmed"] == 4600 and stats["trim_dropped_pending"] == 4600


def test_a_pass_longer_than_the_lease_keeps_it_and_copies_once(own_redis):
    """A sidecar whose pass outlasts its leader lease renews it as it goes, so a second
    sidecar never copies the same outbox alongside: every entry once, in order."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")
    _started(r, "a", 640, "s{:04d}")

    async def run() -> None:
        client, scripts = await _with_pools(redis_server, "a")
        slow, fast = (Sidecar(client, keys, scripts, lease_ms=300) for _ in range(2))
        copy = slow.copy_outbox

        async def slowly(pool_id: str) -> int:  # 10 batches of 64, 100 ms each: 1 s
            real = client.execute

            async def execute(*args):
                if args[0] == "XDEL":
                    await asyncio.sleep(0.1)
                return await real(*args)

            client.execute = execute
            try:
                return await copy(pool_id)
            finally:
                client.execute = real

        slow.copy_outbox = slowly
        assert await slow.lead()

        async def other() -> None:  # tries to lead every 50 ms meanwhile
            for _ in range(30):
                await asyncio.sleep(0.05)
                if await fast.lead():
                    await fast.cycle()

        await asyncio.gather(slow.cycle(), other())
        await client.close()

    asyncio.run(run())
    ids = [f[b"session_id"].decode() for _, f in r.xrange(keys.sessions_stream())]
    assert ids == [f"s{i:04d}" for i in range(640)]


def test_a_sidecar_stalled_past_its_lease_does_not_copy_what_it_read(own_redis):
    """A sidecar pauses (GC, a frozen VM) after reading a batch, past its lease; another
    takes over and copies the outbox. Back, the first checks it still leads before
    writing: no entry is copied twice (nor after its own session.ended)."""
    redis_server, r = own_redis  # no other broker's sidecar leads here
    keys = Keys("dni")
    _started(r, "a", 64, "s{:04d}")

    async def run() -> None:
        client, scripts = await _with_pools(redis_server, "a")
        stalled, other = (Sidecar(client, keys, scripts, lease_ms=300) for _ in range(2))
        real = client.execute
        paused = asyncio.Event()

        async def execute(*args):
            out = await real(*args)
            if args[0] == "XRANGE" and not paused.is_set():  # the batch is read: pause
                paused.set()
                await asyncio.sleep(0.6)  # twice the lease
            return out

        client.execute = execute
        assert await stalled.lead()

        async def take_over() -> None:
            await paused.wait()
            await asyncio.sleep(0.4)  # the stalled one's lease ran out
            assert await other.lead()
            await other.cycle()

        results = await asyncio.gather(stalled.copy_outbox("a"), take_over(),
                                       return_exceptions=True)
        client.execute = real
        await client.close()
        assert isinstance(results[0], NotLeader), results

    asyncio.run(run())
    ids = [f[b"session_id"].decode() for _, f in r.xrange(keys.sessions_stream())]
    assert ids == [f"s{i:04d}" for i in range(64)]


def test_sidecar_once_leaves_the_lease_free_and_yields_to_a_leader(own_redis):
    url, r = own_redis  # no other broker's sidecar leads here
    env = dict(os.environ, DNI_REDIS_URL=url)
    once = [sys.executable, "-m", "broker.cli", "sidecar", "--once"]
    done = subprocess.run(once, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not r.exists("dni:sidecar:leader")  # given back: the running sidecars go on
    r.set("dni:sidecar:leader", "someone-else", px=10_000)
    other = subprocess.run(once, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert other.returncode == 0 and "another sidecar leads" in other.stderr
    assert "Traceback" not in other.stderr
