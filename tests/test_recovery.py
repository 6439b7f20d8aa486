"""A script cache flush or a Redis restart mid-run costs no failed request."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx
import pytest
import redis

from tests.conftest import ADMIN_TOKEN, BrokerProcess, free_port, numbers, start_redis, stop


async def _load_while(url: str, pool_id: str, requests: int, clients: int,
                      disturb, every_s: float) -> list[int]:
    statuses: list[int] = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker(w: int) -> None:
            for i in range(requests // clients):
                res = await client.post("/v1/dni/session", json={
                    "pool_id": pool_id, "visitor_id": f"w{w}-{i % 7}"})
                statuses.append(res.status_code)

        async def disturber() -> None:
            while not done.is_set():
                await asyncio.sleep(every_s)
                await asyncio.to_thread(disturb)

        d = asyncio.create_task(disturber())
        await asyncio.gather(*(worker(w) for w in range(clients)))
        done.set()
        await d
    return statuses


@pytest.mark.slow
def test_script_flush_mid_run_costs_no_request(broker, make_pool, r: redis.Redis):
    pool = make_pool(500)
    flushes = []

    def flush() -> None:
        r.script_flush()
        flushes.append(1)

    statuses = asyncio.run(_load_while(broker.url, pool["id"], 3000, 64, flush, 0.05))
    assert len(flushes) >= 3
    assert statuses.count(200) == len(statuses) == 3000 // 64 * 64


@pytest.mark.slow
def test_redis_restart_mid_run_costs_no_request():
    """Redis restarts (AOF on, so the pool survives); requests wait for it and succeed."""
    tmp = tempfile.mkdtemp(prefix="dni-test-restart-")
    port = free_port()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    server = start_redis(tmp, port, *aof)
    broker = BrokerProcess(f"redis://127.0.0.1:{port}/0")
    broker.env["DNI_REDIS_RETRY_MS"] = "10000"  # a slow machine may take seconds to restart
    broker.start()
    restarts = []
    try:
        with httpx.Client(base_url=broker.url,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            pool = admin.post("/v1/pools", json={"name": "r", "numbers": numbers(200)}).json()

        def restart() -> None:
            nonlocal server
            if restarts:
                return
            stop(server)  # SIGTERM: Redis writes its AOF and exits
            server = start_redis(tmp, port, *aof)
            restarts.append(1)

        statuses = asyncio.run(_load_while(broker.url, pool["id"], 1280, 32, restart, 0.3))
        assert restarts == [1]
        assert statuses.count(200) == len(statuses) == 1280, (Counter(statuses), broker.log())
        assert httpx.get(broker.url + "/readyz").status_code == 200
    finally:
        broker.stop()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


def test_readyz_is_503_when_redis_is_down():
    """...and the public answer and the log never show the Redis password."""
    port = free_port()  # nothing listens there
    broker = BrokerProcess(f"redis://default:s3cret-pw@127.0.0.1:{port}/0")
    broker.env["DNI_REDIS_RETRY_MS"] = "200"
    with open(broker.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", "--port",
                                 str(broker.port)], env=broker.env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(broker.url + "/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, broker.log()
                time.sleep(0.1)
        assert health.status_code == 200
        ready = httpx.get(broker.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        res = httpx.post(broker.url + "/v1/dni/session", timeout=10,
                         json={"pool_id": "p", "visitor_id": "v"})
        assert res.status_code == 503 and res.json()["error"]["code"] == "redis_unavailable"
        assert "s3cret" not in ready.text + res.text
    finally:
        stop(proc)
    log_text = broker.log()
    assert f"127.0.0.1:{port}" in log_text and "s3cret" not in log_text, log_text


def test_a_redis_that_stops_answering_is_503_not_a_hang():
    """A Redis that keeps its connections but answers nothing (SIGSTOP: a hung or
    swapping server): /readyz says 503 within the retry budget, an edge request gets 503
    `redis_unavailable` instead of waiting forever, and all is well once Redis answers."""
    tmp = tempfile.mkdtemp(prefix="dni-test-stopped-")
    port = free_port()
    server = start_redis(tmp, port)
    broker = BrokerProcess(f"redis://127.0.0.1:{port}/0", env={"DNI_REDIS_RETRY_MS": "1000"})
    try:
        broker.start()
        with httpx.Client(base_url=broker.url, timeout=15) as http:
            assert http.get("/readyz").status_code == 200
            server.send_signal(signal.SIGSTOP)
            try:
                t = time.monotonic()
                ready = http.get("/readyz")
                took = time.monotonic() - t
            finally:
                server.send_signal(signal.SIGCONT)
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
            assert took < 5, took
            server.send_signal(signal.SIGSTOP)
            try:
                t = time.monotonic()
                res = http.post("/v1/dni/session", json={"pool_id": "p", "visitor_id": "v"})
                took = time.monotonic() - t
            finally:
                server.send_signal(signal.SIGCONT)
            assert res.status_code == 503, res.text
            # within the budget (1 s), not once more for a resend (>= 2 s)
            assert res.json()["error"]["code"] == "redis_unavailable" and took < 1.9, took
            assert http.get("/readyz").status_code == 200
            res = http.post("/v1/dni/session", json={"pool_id": "p", "visitor_id": "v"})
            assert res.status_code == 404  # answered again (no such pool)
    finally:
        broker.stop()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


class _FlakyRedis(asyncio.Protocol):
    """A stand-in Redis that plays a restart: it drops the first connection with the first
    command unanswered, then answers `-LOADING` a few times, then `:7` to everything."""

    script: list[bytes]

    def __init__(self, script: list[bytes]) -> None:
        self.script = script

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"*")):  # one RESP array per command
            step = self.script.pop(0) if self.script else b":7\r\n"
            if step == b"drop":
                self.transport.close()
                return
            self.transport.write(step)


async def _against_flaky(script: list[bytes], retry_s: float, resend: bool = True,
                         read: bool = False):
    from broker.redisconn import PipelinedRedis
    from broker.scripts import Script

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _FlakyRedis(script), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis(f"redis://127.0.0.1:{port}/0", retry_s)
    try:
        started = time.monotonic()
        try:
            if read:  # a plain read command (redisconn.read), not a script
                return await client.read("GET", "k"), time.monotonic() - started
            return await client.evalsha(Script("t", 0, b"return 7", "0" * 40), [], [],
                                        resend), time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc, time.monotonic() - started
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


def test_lost_connection_and_loading_replies_are_waited_out():
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    script = [b"drop", loading, loading, loading]
    reply, _ = asyncio.run(_against_flaky(script, retry_s=3))
    assert reply == 7 and script == []


def test_a_read_is_sent_again_after_a_drop_as_scripts_are():
    """The reads of a call's attribution (number index, clock): a webhook arriving in a
    Redis blip waits it out instead of answering 503."""
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    script = [b"drop", loading]
    reply, _ = asyncio.run(_against_flaky(script, retry_s=3, read=True))
    assert reply == 7 and script == []


def test_redis_that_stays_loading_is_unavailable_after_the_budget():
    from broker.redisconn import RedisUnavailable

    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    reply, took = asyncio.run(_against_flaky([loading] * 1000, retry_s=0.3))
    assert isinstance(reply, RedisUnavailable) and "LOADING" in str(reply)
    assert 0.3 <= took < 2


def test_other_error_replies_are_not_retried():
    from broker.redisconn import RedisError

    script = [b"-ERR something else\r\n", b":7\r\n"]
    reply, _ = asyncio.run(_against_flaky(script, retry_s=3))
    assert isinstance(reply, RedisError) and str(reply) == "ERR something else"
    assert script == [b":7\r\n"]


def test_a_script_that_must_run_once_is_not_sent_again_after_a_drop():
    """The connection dropped with the command in flight: it may have run. A script
    marked run-once (the number index's counts) is not sent again: 503, not a double
    count; the others are (they answer the same on a second run)."""
    from broker.engine import _RUN_ONCE
    from broker.redisconn import RedisUnavailable

    assert {"fix_numbers", "create_pool", "remove_number", "delete_pool"} <= _RUN_ONCE
    got, _ = asyncio.run(_against_flaky([b"drop"], 2.0, resend=False))
    assert isinstance(got, RedisUnavailable) and "may or may not have run" in str(got)
    got, _ = asyncio.run(_against_flaky([b"drop"], 2.0, resend=True))
    assert got == 7


def test_a_full_redis_is_503_redis_full_and_loses_nothing(http, admin, make_pool, r, broker):
    """Redis at its maxmemory (noeviction) refuses writes that may grow memory: pool
    creations and new sessions are 503 `redis_full` in the error shape, live sessions stay
    alive (reuse and heartbeats only rewrite what exists), and all works once memory is
    freed. (A creation refused half-way: test_pool_races.)"""
    from broker.keys import Keys

    pool = make_pool(2)
    held = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v1"}).json()
    body = {"name": "big", "numbers": numbers(3000, start=7000),
            "target_number": "+15558880000", "fallback_number": "+15558880001"}
    try:
        r.config_set("maxmemory", 1)  # full: nothing that grows memory is accepted
        res = admin.post("/v1/pools", json=body)
        assert res.status_code == 503 and res.json()["error"]["code"] == "redis_full", res.text
        again = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v1"})
        assert again.json()["status"] == "reused", again.text
        beat = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v1",
                                                    "session_id": held["session_id"]})
        assert beat.json()["status"] == "alive", beat.text
        new = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v2"})
        assert new.status_code == 503 and new.json()["error"]["code"] == "redis_full"
        assert new.headers["access-control-allow-origin"] == "*"
        tracebacks = broker.log().count("Traceback")
        time.sleep(1.5)  # sidecar passes meet the full Redis too: a line, no traceback
        assert broker.log().count("Traceback") == tracebacks, broker.log()[-3000:]
    finally:
        r.config_set("maxmemory", 0)
    assert http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v2"}
                     ).json()["status"] == "new"
    created = admin.post("/v1/pools", json=body)
    assert created.status_code == 201, created.text
    assert r.hget(Keys().fixed_index(), "+15558880000") == b"1"


def test_a_redis_refusing_the_broker_is_one_line_fails_fast_and_logs_little(tmp_path):
    """A wrong password is no outage to wait out: requests fail at once (not after the
    retry budget), start-up says why in one line without the password, and a stream of
    failed requests logs a line now and then, not one each. A Redis that may evict keys
    is warned about at start-up."""
    port = free_port()
    server = start_redis(str(tmp_path), port, "--maxmemory-policy", "allkeys-lru")
    redis.Redis(port=port).config_set("requirepass", "right-pw")
    wrong = BrokerProcess(f"redis://:wrong-pw@127.0.0.1:{port}/0",
                          env={"DNI_REDIS_RETRY_MS": "3000"})
    right = BrokerProcess(f"redis://:right-pw@127.0.0.1:{port}/0")
    try:
        wrong.start(wait_ready=False)
        with httpx.Client(base_url=wrong.url, timeout=10) as http:
            assert http.get("/readyz").status_code == 503
            t = time.monotonic()
            res = http.post("/v1/dni/session", json={"pool_id": "p", "visitor_id": "v"})
            assert time.monotonic() - t < 1.5  # not the 3 s budget
            assert res.status_code == 503 and res.json()["error"]["code"] == "redis_unavailable"
            for _ in range(30):
                assert http.post("/v1/dni/session", json={"pool_id": "p", "visitor_id": "v"}
                                 ).status_code == 503
                assert http.get("/readyz").status_code == 503
        wrong.stop()
        log = wrong.log()
        assert "WRONGPASS" in log and "wrong-pw" not in log and "Traceback" not in log, log
        assert log.count("redis unavailable") + log.count("not ready") <= 3, log
        right.start()
        right.stop()
        assert "maxmemory-policy is allkeys-lru" in right.log(), right.log()
    finally:
        wrong.stop()
        right.stop()
        stop(server)


def test_a_command_sent_late_in_a_stall_keeps_its_own_budget(tmp_path):
    """Redis stops answering (SIGSTOP) with a 2 s budget: the command waiting since the
    start fails once its budget is spent; one sent 1.8 s in, whose budget runs to 3.8 s,
    is sent again on a new connection and answered when Redis resumes at 2.3 s."""
    from broker.keys import Keys
    from broker.redisconn import PipelinedRedis, RedisUnavailable
    from broker.scripts import load_scripts

    port = free_port()
    server = start_redis(str(tmp_path), port)

    async def go() -> dict:
        conn = PipelinedRedis(f"redis://127.0.0.1:{port}/0", retry_s=2.0)
        scripts = load_scripts()
        await conn.load_scripts(list(scripts.values()))
        out: dict = {}

        async def call(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            t = time.monotonic()
            try:
                await conn.evalsha(scripts["heartbeat"], Keys().heartbeat_keys("p", "v"),
                                   ["sid", "v"])
                out[name] = ("answered", time.monotonic() - t)
            except RedisUnavailable:
                out[name] = ("failed", time.monotonic() - t)

        server.send_signal(signal.SIGSTOP)
        asyncio.get_running_loop().call_later(2.3, server.send_signal, signal.SIGCONT)
        try:
            await asyncio.gather(call("first", 0), call("late", 1.8))
        finally:
            server.send_signal(signal.SIGCONT)
            await conn.close()
        return out

    try:
        out = asyncio.run(go())
    finally:
        stop(server)
    assert out["first"][0] == "failed" and 2.0 <= out["first"][1] < 2.5, out
    assert out["late"][0] == "answered", out


def test_a_redis_user_without_info_is_served_and_told_apart(tmp_path):
    """An ACL user that may not run INFO: the maxmemory-policy check says it could not
    look, and the broker is ready (not "not reachable at start-up")."""
    port = free_port()
    server = start_redis(str(tmp_path), port)
    redis.Redis(port=port).acl_setuser("app", enabled=True, passwords=["+app-pw"],
                                       keys=["*"], channels=["*"],
                                       commands=["+@all", "-info"])
    b = BrokerProcess(f"redis://app:app-pw@127.0.0.1:{port}/0")
    try:
        b.start()  # ready
        b.stop()
        log = b.log()
        assert "could not check Redis's maxmemory-policy" in log, log
        assert "not reachable" not in log, log
    finally:
        b.stop()
        stop(server)
