"""An embedded local `redis-server` child process for `dni serve` without DNI_REDIS_URL.

AOF on (appendfsync everysec), `maxmemory-policy noeviction` (a session store must never
silently drop a lease), data under DNI_DATA_DIR. It listens on a unix socket only.

The broker owns it:
- one `dni serve` per data directory (an exclusive lock on `DNI_DATA_DIR/.lock`): two
  Redis processes on one AOF would hand one number to two visitors;
- it runs in its own session, so Ctrl-C or a closed terminal reaches the broker, which
  stops Redis after its own shutdown (final count flush included), not before;
- it gets SIGTERM when the broker process dies, even by SIGKILL (Linux), so no orphan
  keeps the socket and the data;
- when it dies while the broker runs, it is started again on the same data (the broker's
  connections wait for it within DNI_REDIS_RETRY_MS).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("dni.embedded")

INSTALL_HINT = ("redis-server not found: install Redis (Debian/Ubuntu: `apt-get install "
                "redis-server`, macOS: `brew install redis`) or set DNI_REDIS_URL")


class RedisNotInstalled(RuntimeError):
    pass


class EmbeddedError(RuntimeError):
    """The embedded Redis cannot run: a one-line reason for the operator."""


try:  # loaded here, not in the forked child (no dlopen between fork and exec)
    import ctypes

    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: stop() still runs on every orderly exit
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (PR_SET_PDEATHSIG = 1)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)


def die_with(parent: int) -> None:
    """In a running child of `parent`: SIGTERM when the parent dies; exit at once if it
    died already (before the signal was asked for)."""
    _die_with_parent()
    if os.getppid() != parent:
        raise SystemExit(f"dni: the process that started this worker ({parent}) is gone")


def running_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The embedded Redis a `dni serve` runs on `data_dir` (its socket is there while it
    runs), for `dni sidecar` and `dni events` when DNI_REDIS_URL is unset."""
    here = Path(data_dir).resolve()
    try:  # the lock file names the socket (in a temporary directory for long paths)
        lines = (here / ".lock").read_text().splitlines()
    except OSError:
        lines = []
    # an older dni serve wrote only its pid: its socket is in the data dir
    sock = Path(lines[1]) if len(lines) > 1 else here / "redis.sock"
    return f"unix://{sock}" if sock.is_socket() else None


def side_redis_url(redis_url: str | None, data_dir: str | os.PathLike[str]) -> str | None:
    """The Redis of `dni sidecar` and `dni events`: DNI_REDIS_URL, else the embedded one of
    a `dni serve` on DNI_DATA_DIR; None after a one-line message saying where it looked."""
    url = redis_url or running_url(data_dir)
    if not url:
        print(f"dni: set DNI_REDIS_URL to the broker's Redis (no dni serve runs an embedded "
              f"one in {data_dir})", file=sys.stderr)
    return url


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket_path = self.data_dir / "redis.sock"
        self._tmp: str | None = None
        if len(str(self.socket_path)) > 100:  # AF_UNIX paths are limited to ~107 bytes
            self._tmp = tempfile.mkdtemp(prefix="dni-")
            self.socket_path = Path(self._tmp) / "redis.sock"
        self._lock: int | None = None
        self._stopping = threading.Event()
        self._spawning = threading.Lock()
        self._watch: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _take_lock(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EmbeddedError(f"cannot use DNI_DATA_DIR {self.data_dir}: "
                                f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            first = os.pread(fd, 4096, 0).decode(errors="replace").split("\n", 1)[0]
            holder = first.strip() or "another process"
            os.close(fd)
            raise EmbeddedError(f"DNI_DATA_DIR {self.data_dir} is in use by another dni serve "
                                f"(pid {holder}); stop it or use another directory") from None
        os.ftruncate(fd, 0)  # who holds it, and where its Redis listens (running_url)
        os.pwrite(fd, f"{os.getpid()}\n{self.socket_path}\n".encode(), 0)
        self._lock = fd

    def start(self, timeout: float = 10.0) -> str:
        """Start Redis and wait until it answers (while it loads its data it may take
        longer than `timeout`: it is waited for as long as it says LOADING)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(INSTALL_HINT)
        if self._lock is None:
            self._take_lock()
        try:
            self._spawn(binary, timeout)
        except BaseException:
            self.stop()  # releases the data directory
            raise
        if self._watch is None:
            self._watch = threading.Thread(target=self._watchdog, args=(binary,),
                                           name="dni-embedded-redis", daemon=True)
            self._watch.start()
        return self.url

    def _spawn(self, binary: str, timeout: float) -> None:
        args = [
            binary, "--port", "0", "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise EmbeddedError(f"redis-server exited at start; see {self.data_dir}/redis.log")
            answer = self._ping()
            if answer == b"+PONG":
                return
            if answer != b"-LOADING" and time.monotonic() > deadline:
                proc, self.proc = self.proc, None
                proc.kill()
                proc.wait()
                raise EmbeddedError(f"redis-server did not answer within {timeout:g} s; see "
                                    f"{self.data_dir}/redis.log")
            time.sleep(0.05)

    def _ping(self) -> bytes:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
                s.sendall(b"PING\r\n")
                return s.recv(64).split(b" ")[0].strip()
        except OSError:
            return b""

    def _watchdog(self, binary: str) -> None:
        """Start Redis again when it dies while the broker runs."""
        while not self._stopping.wait(0.5):
            proc = self.proc
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                log.error("embedded redis-server exited (code %s); starting it again",
                          proc.returncode)
            try:
                with self._spawning:
                    if not self._stopping.is_set():
                        self._spawn(binary, 30.0)
            except EmbeddedError as exc:  # tried again at the next turn
                log.error("%s", exc)
                self._stopping.wait(2)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._spawning:  # not while the watchdog starts one
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)  # releases the data directory
            self._lock = None
