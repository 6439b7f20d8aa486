"""Shared plumbing for benchmarks: a broker under test, run metadata, wrk runs."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the source tree (site-packages when installed as dni_bench)
BACKUP = "+15559999999"  # the pools' backup number: outside every range of tracking numbers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`dni serve` in a child process, on the embedded Redis unless a URL is given."""

    def __init__(self, workers: int = 1, redis_url: str | None = None,
                 token: str = "bench-token") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.tmp = tempfile.mkdtemp(prefix="dni-bench-")
        import broker

        # the broker this bench imported (the source tree's, or the installed one)
        pkg_parent = str(Path(broker.__file__).resolve().parent.parent)
        env = dict(os.environ, DNI_ADMIN_TOKEN=token, DNI_DATA_DIR=self.tmp,
                   DNI_BENCH_ROUTES="1",
                   PYTHONPATH=os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]))
        if redis_url:
            env["DNI_REDIS_URL"] = redis_url
        else:
            env.pop("DNI_REDIS_URL", None)
        self.next_number = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning"],
            env=env, stderr=subprocess.PIPE, text=True)
        self.admin = httpx.Client(base_url=self.url, timeout=60,
                                  headers={"Authorization": f"Bearer {token}"})
        self.redis_url = redis_url or f"unix://{self.tmp}/redis.sock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.admin.get("/readyz").status_code == 200:
                    if not redis_url:  # see LocalRedis: no AOF rewrite fork mid-run
                        import redis

                        with redis.Redis.from_url(self.redis_url) as c:
                            c.config_set("auto-aof-rewrite-percentage", 0)
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"dni serve exited: {self.proc.stderr.read()}")
            time.sleep(0.1)
        raise RuntimeError("dni serve did not become ready")

    def create_pool(self, size: int, ttl_s: int = 1800, fallback: str | None = BACKUP,
                    policy: str = "random", start: int | None = None) -> str:
        """A pool of `size` fictional numbers; each pool gets numbers no other pool has
        (a tracking number belongs to one pool)."""
        if start is None:
            start, self.next_number = self.next_number, self.next_number + size
        numbers = [f"+1555{start + i:07d}" for i in range(size)]
        r = self.admin.post("/v1/pools", json={"name": "bench", "numbers": numbers[:10000],
                                                "session_ttl_s": ttl_s, "policy": policy,
                                                "fallback_number": fallback})
        r.raise_for_status()
        pool_id = r.json()["id"]
        for i in range(10000, size, 10000):
            self.admin.post(f"/v1/pools/{pool_id}/numbers",
                            json={"numbers": numbers[i:i + 10000]}).raise_for_status()
        return pool_id

    def stats(self, pool_id: str) -> dict:
        return self.admin.get(f"/v1/pools/{pool_id}/stats").json()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU time (user + system, seconds) used so far by a process and its descendants,
    summed by command name (`python`, `redis-server`...). Linux /proc only; {} elsewhere."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}  # pid -> (ppid, name, cpu s)
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
        procs[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    todo = [root_pid] if root_pid in procs else []
    while todo:
        pid = todo.pop()
        _, name, cpu = procs[pid]
        out[name] = out.get(name, 0.0) + cpu
        todo.extend(children.get(pid, ()))
    return out


def run_wrk(url: str, duration: float, connections: int = 64, threads: int = 2,
            script: str | None = None, env: dict[str, str] | None = None) -> dict:
    """Run wrk once; return requests/s, non-2xx count and latency percentiles (ms)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(round(duration))}s", "--latency", url]
    if script:
        cmd[1:1] = ["-s", script]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=dict(os.environ, **(env or {})), capture_output=True,
                         text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "requests": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "wrk_cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


class LocalRedis:
    """A redis-server for engine runs: the broker's embedded one (AOF on, unix socket)."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.tmp = None
        self.embedded = None
        if redis_url:
            self.url = redis_url
        else:
            from broker.embedded import EmbeddedRedis

            self.tmp = tempfile.mkdtemp(prefix="dni-bench-redis-")
            self.embedded = EmbeddedRedis(self.tmp)
            self.url = self.embedded.start()
        import redis

        self.client = redis.Redis.from_url(self.url)
        if self.embedded is not None:
            # An automatic AOF rewrite forks a child that takes a whole core for seconds,
            # at random moments of a run: measure the steady state (AOF itself stays on).
            self.client.config_set("auto-aof-rewrite-percentage", 0)

    @property
    def socket(self) -> str | None:
        return self.url[len("unix://"):] if self.url.startswith("unix://") else None

    def close(self) -> None:
        self.client.close()
        if self.embedded is not None:
            self.embedded.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalRedis":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_pool(client, size: int, ttl_ms: int = 1_800_000, fallback: str = BACKUP,
              policy: str = "random", prefix: str = "dni", start: int = 0) -> str:
    """Create a pool straight in Redis with the broker's own create_pool script (any
    session length, even 0, which the API does not accept); returns its id."""
    import secrets

    from broker.keys import Keys
    from broker.scripts import load_scripts

    scripts = load_scripts()
    keys = Keys(prefix)
    pool_id = secrets.token_hex(8)
    fields = ["ttl_ms", str(ttl_ms), "fallback", fallback, "policy", policy, "name", "bench"]
    numbers = [f"+1555{start + i:07d}" for i in range(size)]
    cp, add = scripts["create_pool"], scripts["add_numbers"]
    ks = [keys.pool(pool_id), keys.numbers(pool_id)]
    client.eval(cp.body, 2, *ks, len(fields) // 2, *fields, *numbers[:10000])
    for i in range(10000, size, 10000):
        client.eval(add.body, 3, *ks, keys.inactive(pool_id), *numbers[i:i + 10000])
    client.sadd(keys.pool_index(), pool_id)
    return pool_id


def metadata(redis_url: str | None = None) -> dict:
    """What a run ran against: commit, machine, versions, Redis INFO figures."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                                capture_output=True, text=True).stdout.strip())
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    meta = {
        "commit": commit, "dirty": dirty, "python": platform.python_version(),
        "machine": {"cores": os.cpu_count(), "model": model, "platform": platform.platform()},
        "packages": {p: ver(p) for p in ("dni-broker", "starlette", "uvicorn", "redis",
                                         "hiredis", "orjson", "msgspec", "uvloop", "httptools")},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if redis_url:
        import redis

        info = redis.Redis.from_url(redis_url).info()
        meta["redis"] = {k: info.get(k) for k in (
            "redis_version", "used_memory", "used_memory_human", "maxmemory_policy",
            "aof_enabled", "connected_clients", "instantaneous_ops_per_sec",
            "used_memory_peak", "mem_fragmentation_ratio", "db0")}
    return meta


def dump(result: dict, path: str | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    if path:
        Path(path).write_text(text + "\n")
    else:
        print(text)
