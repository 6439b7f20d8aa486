"""Redis access for the broker: one auto-pipelining connection per process.

Every command issued during one event-loop tick is written to the socket in one batch,
and replies are matched to callers in order (Redis answers in order on a connection).
Under load this turns thousands of concurrent EVALSHA calls into a few large writes and
reads, with no lock and no connection pool. Replies are parsed by hiredis.

For a Redis Cluster (`DNI_REDIS_CLUSTER=1`) the broker uses redis-py's cluster client
instead (`ClusterRedis`), which routes each script by its keys' hash slot.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from .scripts import Script


class RedisError(Exception):
    """Redis answered an error reply (hiredis builds these)."""


class RedisUnavailable(ConnectionError):
    """Redis could not be reached within the retry budget."""


class ConnectionLost(RedisUnavailable):
    """The connection dropped with this command in flight (Redis restarting, say), or
    was dropped because Redis answered nothing for the whole retry budget."""


# Error replies of a Redis that is up but cannot serve yet: starting (loading its AOF or
# RDB), a replica without its primary, a cluster slot in migration. Worth waiting for.
TRANSIENT = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def parse_redis_url(url: str) -> dict[str, Any]:
    u = urlsplit(url)
    opts: dict[str, Any] = {
        "username": unquote(u.username) if u.username else None,
        "password": unquote(u.password) if u.password else None,
        "db": 0,
        "ssl": u.scheme == "rediss",
    }
    if u.scheme == "unix":
        opts["path"] = u.path
        for part in u.query.split("&"):
            if part.startswith("db="):
                opts["db"] = int(part[3:])
    else:
        opts["host"] = u.hostname or "localhost"
        opts["port"] = u.port or 6379
        if u.path and u.path.strip("/"):
            opts["db"] = int(u.path.strip("/"))
    return opts


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    u = urlsplit(url)
    if u.password is None:
        return url
    user = (u.username or "") + ":***@"
    return u._replace(netloc=user + u.netloc.rsplit("@", 1)[1]).geturl()


class _Protocol(asyncio.Protocol):
    def __init__(self, stall_s: float = 0.0) -> None:
        self.reader = hiredis.Reader(replyError=RedisError)
        self.pending: deque[asyncio.Future] = deque()
        self.transport: asyncio.Transport | None = None
        self.buf: list[bytes] = []  # commands of this tick, written in one batch
        self.flush_scheduled = False
        # Cached: on Python 3.11 every get_running_loop() costs a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        # A Redis that holds the connection but answers nothing (stopped, hung) would keep
        # every request waiting: after `stall_s` without a reply to a command waiting, the
        # connection is dropped, which fails (or retries) what was in flight.
        self.stall_s = stall_s
        self.last_reply = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.stalled = False  # dropped by the watchdog

    def send(self, command: bytes, fut: asyncio.Future) -> None:
        if not self.pending:
            # the wait starts now (time.monotonic, the clock of evalsha's budget: the
            # loop's clock is cached per iteration and whole milliseconds)
            self.last_reply = time.monotonic()
            if self.watchdog is None and self.stall_s > 0:
                self.watchdog = self.loop.call_later(self.stall_s, self.check_stall)
        self.pending.append(fut)
        self.buf.append(command)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        buf, self.buf = self.buf, []
        if self.transport is not None and not self.closed.done():
            self.transport.write(b"".join(buf))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def check_stall(self) -> None:
        self.watchdog = None
        if not self.pending or self.closed.done():
            return
        waited = time.monotonic() - self.last_reply
        if waited >= self.stall_s and self.transport is not None:
            self.stalled = True
            self.transport.abort()  # connection_lost fails the pending commands
            return
        self.watchdog = self.loop.call_later(self.stall_s - waited, self.check_stall)

    def data_received(self, data: bytes) -> None:
        self.last_reply = time.monotonic()
        self.reader.feed(data)
        pending = self.pending
        try:
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                fut = pending.popleft()
                if fut.done():
                    continue
                if isinstance(reply, RedisError):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
        except hiredis.ProtocolError as exc:  # the stream is unusable: drop it
            if self.transport:
                self.transport.abort()
            self.connection_lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.stalled:
            err = ConnectionLost(f"Redis answered nothing for {self.stall_s:g} s")
        else:
            err = ConnectionLost(f"connection to Redis lost: {exc or 'closed'}")
        self.buf.clear()
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(None)


class PipelinedRedis:
    """A single auto-pipelining connection. `await execute(*args)` returns the reply."""

    def __init__(self, url: str, retry_s: float = 3.0) -> None:
        self.url = url
        self.opts = parse_redis_url(url)
        self.retry_s = retry_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task | None = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        o = self.opts
        make = functools.partial(_Protocol, max(self.retry_s, 1.0))
        if "path" in o:
            _, proto = await loop.create_unix_connection(make, o["path"])
        else:
            ctx = ssl.create_default_context() if o["ssl"] else None
            _, proto = await loop.create_connection(make, o["host"], o["port"], ssl=ctx)
            sock = proto.transport.get_extra_info("socket") if proto.transport else None
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello: list[tuple] = []
        if o["password"]:
            hello.append(("AUTH", o["username"], o["password"]) if o["username"]
                         else ("AUTH", o["password"]))
        if o["db"]:
            hello.append(("SELECT", str(o["db"])))
        try:
            for cmd in hello:
                fut = loop.create_future()
                proto.send(hiredis.pack_command(cmd), fut)  # under the stall watchdog too
                await fut
        except BaseException:
            if proto.transport is not None:
                proto.transport.close()
            raise
        return proto

    async def _connect(self) -> _Protocol:
        """Connect, retrying for up to `retry_s` seconds (Redis restarting, say)."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                proto = await self._open()
                self._proto = proto
                return proto
            except RedisError as exc:  # AUTH or SELECT refused: waiting will not help
                raise RedisUnavailable(f"Redis at {redact_url(self.url)} refused the "
                                       f"connection: {exc}") from None
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    raise RedisUnavailable(
                        f"cannot reach Redis at {redact_url(self.url)}: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _ensure(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed.done():
            return proto
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def execute(self, *args: Any) -> Any:
        proto = self._proto
        if proto is None or proto.closed.done():
            proto = await self._ensure()
        fut = proto.loop.create_future()
        proto.send(hiredis.pack_command(args), fut)
        return await fut

    async def evalsha(self, script: Script, keys: list[str], args: list[Any],
                      resend: bool = True) -> Any:
        """Run a script: EVALSHA, then EVAL on NOSCRIPT (script cache flushed, Redis restarted).

        A Redis restart is waited out for up to `retry_s`: a command in flight when the
        connection drops is sent again, and so is one that finds Redis still loading its
        data. A command in flight may have run before the drop, so only scripts safe to run
        twice are sent again: a session or heartbeat that did run answers the same on the
        second run (`reused`, `alive`), a call posted twice is one call, a count flush has
        its marker. `resend=False` (scripts that must not run twice, like the index counts)
        turns a drop with the command in flight into RedisUnavailable."""
        # the budget counts from the first send (a stalled connection is given up once
        # its oldest command waited the budget: that one is out of time, not a resend)
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                try:
                    return await self.execute("EVALSHA", script.sha, script.numkeys, *keys, *args)
                except RedisError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    return await self.execute("EVAL", script.body, script.numkeys, *keys, *args)
            except (ConnectionLost, RedisError) as exc:
                await self._recover(exc, deadline, resend, script.name)

    async def read(self, *args: Any) -> Any:
        """A command that is safe to send twice (a read), sent again as evalsha's scripts
        are: when the connection drops with it in flight or Redis is still loading, within
        `retry_s` (a telephony webhook arriving in a Redis blip is not lost)."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return await self.execute(*args)
            except (ConnectionLost, RedisError) as exc:
                await self._recover(exc, deadline, True, str(args[0]))

    async def _recover(self, exc: Exception, deadline: float, resend: bool, what: str) -> None:
        """After a failed send: return to send it again, or raise."""
        if isinstance(exc, ConnectionLost) and not resend:
            raise RedisUnavailable(f"Redis dropped the connection with {what} in flight; "
                                   f"it may or may not have run: {exc}") from exc
        transient = isinstance(exc, ConnectionLost) or str(exc).startswith(TRANSIENT)
        # Resent only with a tenth of the budget left at least: a connection given up for
        # a stall fails the commands that joined its queue just before too, and a resend
        # to a Redis still silent would wait a whole stall again.
        if not transient or deadline - time.monotonic() < 0.1 * self.retry_s:
            if transient:
                raise RedisUnavailable(f"Redis did not recover: {exc}") from exc
            raise exc
        if not isinstance(exc, ConnectionLost):
            await asyncio.sleep(0.05)

    async def load_scripts(self, scripts: list[Script]) -> None:
        for script in scripts:
            await self.execute("SCRIPT", "LOAD", script.body)

    async def scripts_loaded(self, scripts: list[Script]) -> bool:
        return all(await self.execute("SCRIPT", "EXISTS", *(s.sha for s in scripts)))

    async def close(self) -> None:
        proto = self._proto
        self._proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            await asyncio.wait_for(asyncio.shield(proto.closed), 1)


class ClusterRedis:
    """The same interface over redis-py's cluster client (hash-slot routing), with the
    same failure contract: a cluster that cannot serve within the retry budget is
    RedisUnavailable (503 at the edge), an error reply is RedisError.

    Every retry is this class's (`_call`), none is redis-py's: one budget bounds a call,
    and a script that must not run twice is not sent again behind its back."""

    def __init__(self, url: str, retry_s: float = 3.0,
                 nodes: tuple[tuple[str, int], ...] = ()) -> None:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.retry_s = retry_s
        # A node that holds the connection but answers nothing (stopped, hung) is given
        # up after half the budget: the call has time left to find the slot's new owner
        # after a failover (redis-py then re-reads the topology, asking that node last).
        stall_s = max(retry_s, 1.0) / 2
        self._client = RedisCluster.from_url(
            url, decode_responses=False, protocol=2, retry=Retry(NoBackoff(), 0),
            socket_timeout=stall_s, socket_connect_timeout=stall_s,
            # the cluster is discovered from any of these that answers, the URL's node too
            startup_nodes=[ClusterNode(host, port) for host, port in nodes])
        _raw_replies(self._client)

    async def _call(self, make: Any, resend: bool = True, start: float | None = None) -> Any:
        """Run `make()` (a fresh coroutine each try) until it answers, trying again while
        the cluster cannot serve: nodes unreachable, a failover (CLUSTERDOWN, dropped
        connections), a slot in migration (TRYAGAIN), redis-py's own errors while the
        topology changes under it. The budget counts from `start`: no try begins after
        `retry_s`, and none runs past max(retry_s, 1 s) (a first try has 1 s at least,
        as PipelinedRedis's stall watchdog gives). `resend=False`: after a try that may
        have run (its connection dropped or timed out with it in flight), no other."""
        from redis import exceptions as rx

        start = time.monotonic() if start is None else start
        last_try = start + self.retry_s
        give_up = start + max(self.retry_s, 1.0)
        failed_node = None  # the node of the last dropped connection: asked last
        last: Exception | None = None
        while True:
            limit = asyncio.timeout(give_up - time.monotonic())
            try:
                async with limit:
                    if failed_node is None:
                        await self._client.initialize()  # a no-op unless the topology
                    else:  # must be read (again): at start-up, after a drop, CLUSTERDOWN
                        await self._client.initialize(last_failed_node_name=failed_node)
                    return await make()
            except rx.ResponseError as exc:
                if not isinstance(exc, (rx.TryAgainError, rx.ClusterDownError)):
                    raise RedisError(_reply_text(exc)) from None
                last = exc  # refused before running: worth waiting
            except (rx.ClusterError, rx.RedisClusterException, rx.BusyLoadingError,
                    rx.MaxConnectionsError) as exc:
                # not run: redirected or told TRYAGAIN too often ("TTL exhausted"), no
                # node reachable, a slot not served, loading, no free connection
                last = exc
            except Exception as exc:  # noqa: BLE001 - a drop, a timeout, redis-py's races
                if limit.expired():
                    raise RedisUnavailable(
                        f"Redis Cluster did not answer within {give_up - start:g} s"
                        + (f"; before that: {_named(last)}" if last else "")) from None
                # a dropped connection, a timeout, or redis-py tripping over its own
                # connections while a failover changes them (RuntimeError on a closed
                # transport, AttributeError on a connection torn down): it may have run
                if not resend:
                    raise RedisUnavailable(f"Redis Cluster dropped a command in flight; it "
                                           f"may or may not have run: {_named(exc)}") from None
                failed_node = getattr(exc, "last_failed_node_name", None)
                last = exc
            if time.monotonic() + 0.05 >= last_try:
                raise RedisUnavailable(f"Redis Cluster not serving: {_named(last)}") from None
            await asyncio.sleep(0.05)

    async def execute(self, *args: Any) -> Any:
        return await self._call(lambda: self._client.execute_command(*args))

    read = execute  # every command is retried within the budget here (_call)

    async def evalsha(self, script: Script, keys: list[str], args: list[Any],
                      resend: bool = True) -> Any:
        from redis.exceptions import NoScriptError

        async def run() -> Any:
            try:
                return await self._client.evalsha(script.sha, script.numkeys, *keys, *args)
            except NoScriptError:
                return await self._client.eval(script.body, script.numkeys, *keys, *args)

        if resend:
            return await self._call(run)
        # At most once (see PipelinedRedis.evalsha): wait until the node serving the
        # script's slot answers, then send it once, within the same budget.
        start = time.monotonic()
        await self._call(lambda: self._client.execute_command(
            "PING", target_nodes=self._client.get_node_from_key(keys[0])), start=start)
        return await self._call(run, resend=False, start=start)

    async def load_scripts(self, scripts: list[Script]) -> None:
        async def run() -> None:
            for node in self._client.get_primaries():
                for script in scripts:
                    await self._client.execute_command("SCRIPT", "LOAD", script.body,
                                                       target_nodes=node)

        await self._call(run)

    async def scripts_loaded(self, scripts: list[Script]) -> bool:
        async def run() -> bool:
            for node in self._client.get_primaries():
                found = await self._client.execute_command(
                    "SCRIPT", "EXISTS", *(s.sha for s in scripts), target_nodes=node)
                if not all(found):
                    return False
            return True

        return await self._call(run)

    async def close(self) -> None:
        await self._client.aclose()


def _reply_text(exc: Exception) -> str:
    """An error reply as Redis wrote it. redis-py moves the code of some (OOM, READONLY,
    NOPERM...) into the exception's class and drops it from the text; the edge tells a
    full or refusing Redis (503) from a bug (500) by that code."""
    from redis import exceptions as rx

    text = str(exc)
    code = getattr(exc, "status_code", None) or {
        rx.OutOfMemoryError: "OOM", rx.ReadOnlyError: "READONLY",
        rx.NoPermissionError: "NOPERM"}.get(type(exc))
    return f"{code} {text}" if code and not text.startswith(code) else text


def _named(exc: Exception | None) -> str:
    return f"{type(exc).__name__}: {exc}"


def _raw_replies(client: Any) -> None:
    """Make every node of a redis-py cluster client, those it knows now and those it
    meets later (a node added, a replica promoted, a slot's new owner), answer raw
    replies as PipelinedRedis does: lists, not the dicts, sets and booleans of redis-py's
    reply callbacks. redis-py builds each node it meets from its connection settings, so
    the map goes there, not only on the nodes known now. COMMAND keeps its parser: redis-py
    reads it to route commands, at start-up and each time it re-reads the topology (after
    a dropped connection, CLUSTERDOWN, every fifth MOVED)."""
    raw = {"COMMAND": client.response_callbacks["COMMAND"]}
    client.response_callbacks = raw
    client.nodes_manager.connection_kwargs["response_callbacks"] = raw
    for node in (*client.nodes_manager.startup_nodes.values(),
                 *client.nodes_manager.nodes_cache.values()):
        node.response_callbacks = raw


def connect(url: str, cluster: bool = False, retry_s: float = 3.0,
            cluster_nodes: tuple[tuple[str, int], ...] = ()) -> PipelinedRedis | ClusterRedis:
    return ClusterRedis(url, retry_s, cluster_nodes) if cluster else PipelinedRedis(url, retry_s)
