"""`dni events tail`: the reference consumer of the `dni:sessions` and `dni:calls` streams.

Without a group it prints entries from the start (or only new ones with --follow from
`$`). With `--group G --consumer C` it reads through a consumer group: it first reclaims
entries another consumer left pending for longer than --claim-idle-ms (XAUTOCLAIM), moves
entries delivered more than --max-deliveries times to the dead-letter stream
(`<stream>:dead`) instead of printing them, prints the rest as JSON lines and
acknowledges each after printing (at-least-once).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

import orjson
import redis

from .embedded import side_redis_url
from .keys import Keys
from .settings import positive_int
from .redisconn import redact_url


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _line(stream: str, entry_id: Any, fields: dict) -> bytes:
    body = {"stream": stream, "id": _s(entry_id)}
    body.update({_s(k): _s(v) for k, v in fields.items()})
    return orjson.dumps(body)


class Consumer:
    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str,
                 claim_idle_ms: int = 30_000, max_deliveries: int = 5,
                 out: TextIO | None = None, dead_maxlen: int = 1_000_000) -> None:
        self.r = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead = Keys(stream.split(":", 1)[0]).dead_letters(stream)
        self.dead_maxlen = dead_maxlen  # the dead letters kept (DNI_STREAM_MAXLEN), newest
        self.out = out or sys.stdout
        try:
            self.r.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _deliveries(self, ids: list[Any]) -> dict[str, int]:
        if not ids:
            return {}
        first, last = min(ids, key=_key), max(ids, key=_key)
        rows = self.r.xpending_range(self.stream, self.group, min=first, max=last,
                                     count=len(ids) + 1000)
        return {_s(row["message_id"]): int(row["times_delivered"]) for row in rows}

    def _handle(self, entries: list) -> int:
        """Print (or dead-letter) then acknowledge each entry; returns how many printed."""
        # None or no fields: the entry was deleted (trimmed) after it was delivered
        live = [(i, f) for i, f in entries if f]
        deliveries = self._deliveries([i for i, _ in live])
        printed = 0
        for entry_id, fields in live:
            if deliveries.get(_s(entry_id), 1) > self.max_deliveries:
                dead = dict(fields)
                dead.update({b"dead_from": self.stream, b"dead_id": entry_id,
                             b"dead_group": self.group,
                             b"deliveries": str(deliveries[_s(entry_id)])})
                # exact trim: rare writes, and a consumer failing for months must not
                # grow the dead-letter stream without bound (the sidecar does not trim it)
                self.r.xadd(self.dead, dead, maxlen=self.dead_maxlen, approximate=False)
            else:
                self.out.write(_line(self.stream, entry_id, fields).decode() + "\n")
                self.out.flush()
                printed += 1
            self.r.xack(self.stream, self.group, entry_id)
        gone = [i for i, f in entries if not f]
        if gone:
            self.r.xack(self.stream, self.group, *gone)
        return printed

    def reclaim(self) -> int:
        """Take over entries left pending by a consumer that died (idle long enough)."""
        printed, start = 0, "0-0"
        while True:
            res = self.r.xautoclaim(self.stream, self.group, self.consumer,
                                    self.claim_idle_ms, start_id=start, count=100)
            start, claimed = res[0], res[1]
            printed += self._handle(claimed)
            if _s(start) == "0-0":
                return printed

    def read(self, block_ms: int | None) -> int:
        res = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=100,
                                block=block_ms)
        if not res:
            return 0
        return self._handle(res[0][1])

    def own_pending(self) -> int:
        """Entries delivered to this consumer before and never acknowledged (it died or
        was stopped mid-batch): handled first, in order, by a consumer of the same name."""
        printed, start = 0, "0"
        while True:
            res = self.r.xreadgroup(self.group, self.consumer, {self.stream: start},
                                    count=100)
            entries = res[0][1] if res else []
            if not entries:
                return printed
            printed += self._handle(entries)
            start = _s(entries[-1][0])

    def run(self, follow: bool) -> int:
        printed = self.own_pending() + self.reclaim()
        while True:
            got = self.read(5000 if follow else None)
            printed += got
            if not follow and not got:
                return printed
            if follow:
                printed += self.reclaim()


def _key(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _s(entry_id).partition("-")
    return int(ms), int(seq or 0)


def tail(client: redis.Redis, stream: str, follow: bool, out: TextIO) -> None:
    last = "$" if follow else "0-0"
    if not follow:  # page by page: a long stream must not stall Redis or fill memory
        start = "-"
        while True:
            page = client.xrange(stream, start, "+", count=1000)
            for entry_id, fields in page:
                out.write(_line(stream, entry_id, fields).decode() + "\n")
            out.flush()
            if len(page) < 1000:
                return
            start = "(" + page[-1][0].decode()
    while True:
        res = client.xread({stream: last}, count=100, block=5000)
        for _, entries in res or []:
            for entry_id, fields in entries:
                out.write(_line(stream, entry_id, fields).decode() + "\n")
                last = entry_id
        out.flush()


def add_parser(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="read the sessions and calls streams")
    esub = events.add_subparsers(dest="events_command", required=True)
    t = esub.add_parser("tail", help="print stream entries as JSON lines")
    t.add_argument("--stream", choices=["sessions", "calls"], default="sessions")
    t.add_argument("--follow", action="store_true", help="keep reading new entries")
    t.add_argument("--group", help="read through this consumer group (acknowledges)")
    t.add_argument("--consumer", help="this consumer's name in the group")
    t.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="reclaim entries pending longer than this from dead consumers")
    t.add_argument("--max-deliveries", type=positive_int,
                   default=None,
                   help="entries delivered more often go to <stream>:dead "
                        "(default DNI_MAX_DELIVERIES, 5)")
    t.set_defaults(func=run_tail)


def run_tail(args: argparse.Namespace) -> int:
    from .settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"dni: {exc}", file=sys.stderr)
        return 2
    url = side_redis_url(settings.redis_url, settings.data_dir)
    if not url:
        return 2
    max_deliveries = args.max_deliveries or settings.max_deliveries  # (>= 1: argparse)
    keys = Keys(settings.key_prefix)
    stream = keys.sessions_stream() if args.stream == "sessions" else keys.calls_stream()
    # each command names one stream, so a cluster client routes them one by one; reads
    # block 5 s at a time, so the socket may wait longer than that (redis-py's default
    # timeout would end a quiet --follow after 5 s)
    opts: dict[str, Any] = {"socket_timeout": 30}
    if settings.redis_cluster:
        from redis.cluster import ClusterNode

        client = redis.RedisCluster.from_url(url, startup_nodes=[
            ClusterNode(host, port) for host, port in settings.redis_cluster_nodes], **opts)
    else:
        client = redis.Redis.from_url(url, **opts)
    try:
        if args.group:
            if not args.consumer:
                print("dni: --group needs --consumer", file=sys.stderr)
                return 2
            Consumer(client, stream, args.group, args.consumer, args.claim_idle_ms,
                     max_deliveries, dead_maxlen=settings.stream_maxlen).run(args.follow)
        else:
            tail(client, stream, args.follow, sys.stdout)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        print(f"dni: cannot reach Redis at {redact_url(url)}: {exc}", file=sys.stderr)
        return 2
    except redis.exceptions.ResponseError as exc:  # the group was destroyed meanwhile...
        print(f"dni: {exc}", file=sys.stderr)
        return 2
    return 0
