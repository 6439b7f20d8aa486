"""The same scripts, unchanged, on a real 3-node Redis Cluster (DNI_REDIS_CLUSTER=1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import httpx
import pytest
import redis
from redis.cluster import RedisCluster, key_slot

from broker.keys import Keys
from tests.conftest import ADMIN_TOKEN, BrokerProcess, free_port, numbers, start_redis, stop

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port < 50000 and port not in ports:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                ports.append(port)
            except OSError:
                continue
    return ports


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="dni-test-cluster-")
    ports = _cluster_ports(3)
    procs = [start_redis(tmp, p, "--cluster-enabled", "yes", "--cluster-config-file",
                         f"{tmp}/nodes-{p}.conf") for p in ports]
    try:
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while redis.Redis(port=ports[0]).cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "cluster did not come up"
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def test_broker_on_a_cluster(cluster_url: str):
    broker = BrokerProcess(cluster_url, env={"DNI_REDIS_CLUSTER": "1"}).start()
    admin = None
    try:
        admin = httpx.Client(base_url=broker.url, timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        pools = [admin.post("/v1/pools", json={"name": f"c{i}", "numbers": numbers(3, 10 * i),
                                               "fallback_number": "+15550199999"}).json()
                 for i in range(6)]
        slots = {key_slot(Keys().pool(p["id"]).encode()) for p in pools}
        nodes = RedisCluster.from_url(cluster_url)
        owners = {nodes.get_node_from_key(Keys().pool(p["id"])).name for p in pools}
        assert len(slots) == 6 and len(owners) >= 2  # the pools live on different nodes
        for pool in pools:
            got = [httpx.post(broker.url + "/v1/dni/session",
                              json={"pool_id": pool["id"], "visitor_id": f"v{i}"}).json()
                   for i in range(4)]
            assert [g["status"] for g in got] == ["new", "new", "new", "fallback"]
            assert {g["number"] for g in got[:3]} == set(pool["numbers"])
            hb = httpx.post(broker.url + "/v1/dni/heartbeat", json={
                "pool_id": pool["id"], "visitor_id": "v0", "session_id": got[0]["session_id"]})
            assert hb.json()["status"] == "alive"
            again = httpx.post(broker.url + "/v1/dni/session",
                               json={"pool_id": pool["id"], "visitor_id": "v0"}).json()
            assert again["status"] == "reused"
            stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
            assert stats["active_sessions"] == 3
        # a script cache flush on every node costs nothing either
        for node in nodes.get_primaries():
            redis.Redis(host=node.host, port=node.port).script_flush()
        res = httpx.post(broker.url + "/v1/dni/session",
                         json={"pool_id": pools[0]["id"], "visitor_id": "v9"})
        assert res.status_code == 200 and res.json()["status"] == "fallback"
        assert admin.get("/readyz").status_code == 200
        assert len(admin.get("/v1/pools").json()["pools"]) == 6
        # the sidecar moves every pool's outbox (on its own node) to dni:sessions
        deadline = time.monotonic() + 15
        while nodes.xlen("dni:sessions") < 18:
            assert time.monotonic() < deadline, nodes.xlen("dni:sessions")
            time.sleep(0.1)
        started = [f for _, f in nodes.xrange("dni:sessions") if f[b"event"] == b"session.started"]
        assert len(started) == 18 and {f[b"pool_id"].decode() for f in started} == {
            p["id"] for p in pools}
        call = admin.post("/v1/calls", json={"to": got[0]["number"], "call_id": "CA-cluster"})
        assert call.json()["attributed"] is True
        assert admin.post("/v1/calls", json={"to": got[0]["number"],
                                             "call_id": "CA-cluster"}).json() == call.json()
        assert nodes.xlen("dni:calls") == 1
        # the reference consumer reads the streams from the cluster too
        env = dict(os.environ, DNI_REDIS_URL=cluster_url, DNI_REDIS_CLUSTER="1")
        out = subprocess.run([sys.executable, "-m", "broker.cli", "events", "tail",
                              "--stream", "calls"], env=env, capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["CA-cluster"]
        nodes.close()
    finally:
        if admin is not None:
            admin.close()
        broker.stop()


def test_an_unreachable_cluster_is_503_not_500():
    """DNI_REDIS_CLUSTER=1 keeps the failure contract: /readyz 503 not_ready and the edge
    503 redis_unavailable, within the retry budget (nothing listens at the address)."""
    broker = BrokerProcess(f"redis://127.0.0.1:{free_port()}/0",
                           env={"DNI_REDIS_CLUSTER": "1", "DNI_REDIS_RETRY_MS": "300"})
    broker.start(wait_ready=False)
    try:
        with httpx.Client(base_url=broker.url, timeout=20) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
            res = http.post("/v1/dni/session", json={"pool_id": "p", "visitor_id": "v"})
            assert res.status_code == 503, res.text
            assert res.json()["error"]["code"] == "redis_unavailable"
    finally:
        broker.stop()
