"""`dni serve`: the embedded Redis, its settings and its shutdown; clear start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ROOT, free_port


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("not ready")


@pytest.mark.slow
def test_serve_starts_and_stops_an_embedded_redis(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    env.update(DNI_DATA_DIR=str(tmp_path / "data"), DNI_ADMIN_TOKEN="tok")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port)
    try:
        _wait_ready(url, proc)
        sock = tmp_path / "data" / "redis.sock"
        assert sock.exists()
        client = redis.Redis(unix_socket_path=str(sock))
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("dir")["dir"] == str(tmp_path / "data")
        admin = {"Authorization": "Bearer tok"}
        pool = httpx.post(url + "/v1/pools", headers=admin,
                          json={"name": "e", "numbers": ["+15550100001"]}).json()
        got = httpx.post(url + "/v1/dni/session",
                         json={"pool_id": pool["id"], "visitor_id": "v"}).json()
        assert got["status"] == "new"
        client.close()
        # without DNI_REDIS_URL, the Redis-side commands find this broker's embedded Redis
        for argv in (["sidecar", "--once"], ["events", "tail"]):
            side = subprocess.run([sys.executable, "-m", "broker.cli", *argv], env=env,
                                  cwd=ROOT, capture_output=True, text=True, timeout=30)
            assert side.returncode == 0, (argv, side.stderr)
        def tail() -> str:
            return subprocess.run([sys.executable, "-m", "broker.cli", "events", "tail"],
                                  env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout

        _wait(lambda: got["session_id"] in tail())  # its session.started, once copied
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "embedded Redis" in err
    assert not (tmp_path / "data" / "redis.sock").exists()  # the child Redis is gone
    assert list((tmp_path / "data" / "appendonlydir").iterdir())  # AOF files on disk

    # the data survives a restart of `dni serve` on the same data dir
    proc = _serve(env, port)
    try:
        _wait_ready(url, proc)
        again = httpx.post(url + "/v1/dni/session",
                           json={"pool_id": pool["id"], "visitor_id": "v"}).json()
        assert again["status"] == "reused" and again["session_id"] == got["session_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_serve_without_redis_server_says_how_to_install(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    env.update(DNI_DATA_DIR=str(tmp_path), PATH=str(Path(sys.executable).parent))
    proc = subprocess.run([sys.executable, "-m", "broker.cli", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install redis-server" in lines[0]


@pytest.mark.parametrize("name,value,words", [
    ("DNI_REDIS_URL", "http://x", "must start with redis://"),
    ("DNI_KEY_PREFIX", "a{b}", "DNI_KEY_PREFIX"),
    ("DNI_HEARTBEAT_S", "soon", "not a whole number"),
    ("DNI_REDIS_CLUSTER", "maybe", "not a boolean"),
    ("DNI_REDIS_URL", "redis://localhost:abc", "DNI_REDIS_URL"),
    ("DNI_REDIS_URL", "redis://localhost/x", "DNI_REDIS_URL"),
    ("DNI_REDIS_CLUSTER_NODES", "10.0.0.2:7001", "DNI_REDIS_CLUSTER=1"),
])
def test_bad_settings_give_a_one_line_error(name, value, words):
    env = dict(os.environ, **{name: value})
    proc = subprocess.run([sys.executable, "-m", "broker.cli", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cluster_start_up_nodes_setting():
    from broker.settings import Settings, SettingsError

    base = {"DNI_REDIS_URL": "redis://:pw@10.0.0.1:7000", "DNI_REDIS_CLUSTER": "1"}
    got = Settings.from_env({**base, "DNI_REDIS_CLUSTER_NODES": "10.0.0.2:7001, [::1]:7002"})
    assert got.redis_cluster_nodes == (("10.0.0.2", 7001), ("::1", 7002))
    assert Settings.from_env(base).redis_cluster_nodes == ()
    for env, words in [({"DNI_REDIS_CLUSTER_NODES": "10.0.0.2"}, "not host:port"),
                       ({"DNI_REDIS_CLUSTER_NODES": "10.0.0.2:0"}, "not host:port"),
                       ({"DNI_REDIS_CLUSTER_NODES": "a:1,,b:2"}, "not host:port"),
                       ({"DNI_REDIS_CLUSTER_NODES": "a:1", "DNI_REDIS_CLUSTER": "0"},
                        "DNI_REDIS_CLUSTER=1"),
                       ({"DNI_REDIS_CLUSTER_NODES": "a:1", "DNI_REDIS_URL": ""},
                        "needs DNI_REDIS_URL")]:
        with pytest.raises(SettingsError, match=words):
            Settings.from_env({**base, **env})


def _redis_pids(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"redis-server.*{data_dir}/redis.sock"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_the_embedded_redis_belongs_to_one_broker(tmp_path: Path):
    """One `dni serve` per data directory; its Redis is started again if it dies, and
    goes away with the broker even when the broker is killed outright."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    data = tmp_path / "data"
    env.update(DNI_DATA_DIR=str(data), DNI_ADMIN_TOKEN="tok", DNI_REDIS_RETRY_MS="5000")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port)
    try:
        _wait_ready(url, proc)
        # a second broker on the same data would run a second Redis on the same AOF
        second = subprocess.run([sys.executable, "-m", "broker.cli", "serve", "--port",
                                 str(free_port())], env=env, cwd=ROOT, capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1 and "in use by another dni serve" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        # its Redis dies: the broker starts it again, on the same data
        (first_redis,) = _redis_pids(data)
        os.kill(first_redis, signal.SIGKILL)
        _wait(lambda: _redis_pids(data) not in ([], [first_redis]))
        _wait_ready(url, proc)
        # the broker is killed outright (SIGKILL): its Redis does not outlive it
        proc.kill()
        proc.wait(10)
        _wait(lambda: not _redis_pids(data), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
        for pid in _redis_pids(data):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("argv", [["sidecar", "--once"], ["events", "tail"],
                                  ["events", "tail", "--group", "g", "--consumer", "c"]])
def test_redis_side_commands_say_in_one_line_that_redis_is_down(argv):
    env = dict(os.environ, DNI_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
               DNI_REDIS_RETRY_MS="200")
    proc = subprocess.run([sys.executable, "-m", "broker.cli", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Redis" in lines[0] and "Traceback" not in proc.stderr


def test_redis_side_commands_without_a_redis_say_where_they_looked(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    env["DNI_DATA_DIR"] = str(tmp_path)
    for argv in (["sidecar", "--once"], ["events", "tail"]):
        proc = subprocess.run([sys.executable, "-m", "broker.cli", *argv], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "DNI_REDIS_URL" in proc.stderr
        assert f"no dni serve runs an embedded one in {tmp_path}" in proc.stderr


def test_admin_cli_refuses_what_is_not_a_pool_id():
    """`P/numbers/N` would address a number's route: it is refused before any request."""
    proc = subprocess.run([sys.executable, "-m", "broker.cli", "pools", "delete",
                           "abc/numbers/5550100001", "--url", "http://127.0.0.1:9",
                           "--token", "t"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "is not a pool id" in proc.stderr


def test_a_bad_port_is_a_usage_error_not_a_traceback():
    for env_port, argv in (("abc", []), ("8000", ["--port", "99999"]), ("8000", ["--workers", "0"])):
        proc = subprocess.run([sys.executable, "-m", "broker.cli", "serve", *argv],
                              env=dict(os.environ, DNI_PORT=env_port), cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "error: argument" in proc.stderr.splitlines()[-1]


def test_a_closed_terminal_shuts_the_broker_down_in_order(redis_server):
    """SIGHUP (the terminal went away) is an orderly shutdown, as SIGTERM is: the
    application's shutdown runs (the sidecar gives its lease up), no traceback."""
    from tests.conftest import BrokerProcess

    b = BrokerProcess(redis_server, env={"DNI_SIDECAR": "1"}).start()
    b.proc.send_signal(signal.SIGHUP)
    assert b.proc.wait(20) == 0
    log = b.log()
    assert "Traceback" not in log and "CancelledError" not in log, log


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_the_workers_go_with_their_broker(redis_server, sig):
    """`--workers 2`: a closed terminal stops the broker (uvicorn's supervisor would
    restart the workers), and workers do not outlive a killed broker, holding its port."""
    from tests.conftest import BrokerProcess

    b = BrokerProcess(redis_server, workers=2).start()
    try:
        deadline = time.monotonic() + 20
        while len(workers := [p for p in _children(b.proc.pid)
                              if "multiprocessing.spawn" in
                              Path(f"/proc/{p}/cmdline").read_text()]) < 2:
            assert time.monotonic() < deadline, _children(b.proc.pid)
            time.sleep(0.1)
        b.proc.send_signal(sig)
        code = b.proc.wait(20)
        assert code == (0 if sig == signal.SIGHUP else -signal.SIGKILL), b.log()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers):
            assert time.monotonic() < deadline, (workers, b.log())
            time.sleep(0.1)
        with pytest.raises(httpx.TransportError):
            httpx.get(b.url + "/healthz", timeout=2)
    finally:
        for p in _children(b.proc.pid) if b.proc.poll() is None else []:
            os.kill(p, signal.SIGKILL)
        b.stop()


@pytest.mark.parametrize("where", ["default", "long"])
def test_redis_side_commands_find_the_embedded_redis(tmp_path, where):
    """`dni sidecar` and `dni events` beside a `dni serve` on the default ./.dni (a
    relative path), or on a data dir too long for a socket path (the socket is then in a
    temporary directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DNI_")}
    env["DNI_ADMIN_TOKEN"] = "tok"
    if where == "long":
        env["DNI_DATA_DIR"] = str(tmp_path / ("d" * 60) / ("e" * 60))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        for argv in (["sidecar", "--once"], ["events", "tail"]):
            side = subprocess.run([sys.executable, "-m", "broker.cli", *argv], env=env,
                                  cwd=tmp_path, capture_output=True, text=True, timeout=30)
            assert side.returncode == 0, (argv, side.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_a_hangup_of_the_whole_group_stops_the_workers_in_order(redis_server, r):
    """A closed terminal sends SIGHUP to every process of the group, workers included:
    they are stopped in order by their supervisor (their last answer counts are flushed),
    not cut short by SIGHUP's default action."""
    env = dict(os.environ, DNI_REDIS_URL=redis_server, DNI_ADMIN_TOKEN="tok",
               DNI_STATS_FLUSH_MS="60000")  # only the flush at shutdown writes the counts
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", "--port", str(port),
                             "--workers", "2", "--log-level", "warning"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_ready(url, proc)
        pool = httpx.post(url + "/v1/pools", headers={"Authorization": "Bearer tok"},
                          json={"name": "hup", "numbers": ["+15550100001"]}).json()
        for v in ("a", "b", "c"):
            assert httpx.post(url + "/v1/dni/session", json={"pool_id": pool["id"],
                                                             "visitor_id": v}).status_code == 200
        os.killpg(proc.pid, signal.SIGHUP)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    counted = 0
    for key in r.scan_iter(f"dni:{{{pool['id']}}}:m:*"):
        counted += sum(int(r.hget(key, f) or 0) for f in ("new", "fallback", "unavailable"))
    assert counted == 3, err


def test_the_socket_of_an_older_dni_serve_is_found(tmp_path):
    """A data dir whose lock an older version wrote (its pid only): its Redis's socket is
    the data dir's redis.sock."""
    import socket

    from broker.embedded import running_url

    (tmp_path / ".lock").write_text("12345")
    assert running_url(tmp_path) is None  # no socket: no Redis runs there
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "redis.sock"))
        assert running_url(tmp_path) == f"unix://{tmp_path / 'redis.sock'}"
