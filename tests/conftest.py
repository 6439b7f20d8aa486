"""Shared fixtures: a real redis-server on a free port, a real `dni serve`, factories."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: str, port: int, *extra: str) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--logfile", f"{tmp}/redis-{port}.log",
         *extra],
        stdin=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a real redis-server for the whole run (fresh data for each test: `r`)."""
    tmp = tempfile.mkdtemp(prefix="dni-test-redis-")
    port = free_port()
    proc = start_redis(tmp, port)
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def r(redis_server: str) -> Iterator[redis.Redis]:
    """A client on the test Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield client
    client.close()


class BrokerProcess:
    def __init__(self, redis_url: str, env: dict[str, str] | None = None,
                 workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, DNI_REDIS_URL=redis_url, DNI_ADMIN_TOKEN=ADMIN_TOKEN,
                        **(env or {}))
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="dni-test-broker-")) / "broker.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, wait_ready: bool = True) -> "BrokerProcess":
        """Start `dni serve`; wait until /readyz says 200 (or, not waiting for Redis,
        until the process answers /healthz)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "serve", "--port", str(self.port),
                 "--workers", str(self.workers), "--log-level", "warning"],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if wait_ready and httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
                if not wait_ready and httpx.get(self.url + "/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.log())
            time.sleep(0.1)
        self.stop()  # not left running behind the failed test
        raise RuntimeError("dni serve did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)


@pytest.fixture(scope="session")
def broker(redis_server: str) -> Iterator[BrokerProcess]:
    """A real `dni serve` process on the test Redis, for the whole run."""
    b = BrokerProcess(redis_server).start()
    yield b
    b.stop()


@pytest.fixture
def http(broker: BrokerProcess, r: redis.Redis) -> Iterator[httpx.Client]:
    """A plain client on the broker (Redis emptied first)."""
    with httpx.Client(base_url=broker.url, timeout=10) as client:
        yield client


@pytest.fixture
def admin(broker: BrokerProcess, r: redis.Redis) -> Iterator[httpx.Client]:
    """A client carrying the admin token (Redis emptied first)."""
    with httpx.Client(base_url=broker.url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def numbers(count: int, start: int = 0) -> list[str]:
    """Fictional numbers +1 555 0xx xxxx, valid for the broker."""
    return [f"+1555{start + i:07d}" for i in range(count)]


@pytest.fixture
def make_pool(admin: httpx.Client) -> Callable[..., dict]:
    """Factory: create a pool through the admin API and return the pool object."""

    used = [0]  # a tracking number belongs to one pool: each pool gets fresh numbers

    def make(size: int = 5, **fields: object) -> dict:
        body = {"name": "test pool", "numbers": numbers(size, used[0]), **fields}
        used[0] += size
        res = admin.post("/v1/pools", json=body)
        assert res.status_code == 201, res.text
        return res.json()

    return make
