"""The sidecar: moves each pool's outbox into the consumers' `dni:sessions` stream.

Every `session.started` record is written to the pool's outbox by the same script that
assigned the number, so nothing is lost if a broker dies after answering. The sidecar:

1. reports ended sessions (end_sessions-5.lua writes `session.ended` to the outbox once
   per lease; a lease whose number was reassigned first was reported by the session
   script) and moves numbers whose lease was refreshed after their score was written to
   that lease's end, so that scores are exact within one interval (see session-5.lua);
2. copies outbox entries, in order, to `dni:sessions` with flat fields, then deletes them
   from the outbox. A sidecar killed between the two copies them again on restart
   (at-least-once, as the contract says); in the normal case each entry is copied once;
   Deleted pools stay in a draining set until their outbox has been copied;
3. bounds the streams (DNI_STREAM_MAXLEN), warning (log line and the `trim_dropped_pending`
   counter) when trimming drops entries a consumer group has not acknowledged.

Several sidecars may run (one per `dni serve` worker, plus `dni sidecar`): they elect a
leader through a lease key and only the leader works, so entries are not copied twice.
Every script touches one pool's hash slot, so it works on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Awaitable

from .engine import Engine
from .keys import Keys
from .logs import Throttled
from .redisconn import RedisError, RedisUnavailable
from .scripts import Script
from .source import flat
from .stats import BUCKET_TTL_S

log = logging.getLogger("dni.sidecar")

# Small batches: the sidecar shares its event loop (and Redis) with the edge, so each
# step must be short. Between batches it yields, letting waiting requests run.
BATCH = 64
POOLS_AT_ONCE = 16
LEADER_TTL_MS = 10_000
# Streams are trimmed to DNI_STREAM_MAXLEN by the sidecar's retention check, which can
# tell what the trim drops. The calls the API writes cap the calls stream at this multiple
# of it, should no sidecar run (the sidecar's own copies are followed by the check).
SAFETY_CAP = 2
STATS_FIELDS = ("copied", "ended_reported", "trimmed", "trim_dropped_pending", "cycles")


def _s(v: Any) -> str:
    # never strict: one undecodable entry must not stop the copying of every later one
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def consumer_fields(raw: dict[str, str]) -> dict[str, str]:
    """An outbox entry as the consumer-facing entry: the source packed by the session
    script becomes the contract's flat fields (ip, user_agent, landing_page, utm_*...)."""
    out = {k: v for k, v in raw.items() if k != "source"}
    out.update(flat(raw.get("source")))
    return out


def outbox_records(entries: list[Any]) -> list[dict[str, str]]:
    """XRANGE entries of an outbox as dicts of their fields."""
    return [{_s(raw[i]): _s(raw[i + 1]) for i in range(0, len(raw), 2)} for _, raw in entries]


def tally_ended(redis: Any, keys: Keys, pool_id: str,
                records: list[dict[str, str]]) -> list[Awaitable[Any]]:
    """The writes adding the `session.ended` records' lease lengths to the pool's minute
    buckets (by the minute each lease ended): `ended` +1 and `held_ms` +duration_ms each.
    The admin API's sizing reads its holding time there (stats.py)."""
    ended: dict[int, list[int]] = {}  # minute -> [leases ended, their total ms]
    for rec in records:
        if rec.get("event") != "session.ended":
            continue
        try:
            minute, ms = int(rec["ended_at"]) // 60_000, int(rec["duration_ms"])
        except (KeyError, ValueError):
            continue
        tally = ended.setdefault(minute, [0, 0])
        tally[0] += 1
        tally[1] += ms
    writes = []
    for minute, (n, ms) in ended.items():
        key = keys.minute(pool_id, minute)
        writes += [redis.execute("HINCRBY", key, "ended", n),
                   redis.execute("HINCRBY", key, "held_ms", ms),
                   redis.execute("EXPIRE", key, BUCKET_TTL_S, "NX")]  # as the counts' buckets
    return writes


class NotLeader(Exception):
    """The leader lease went to another sidecar during a pass: this one stops at once."""


class Sidecar:
    def __init__(self, redis: Any, keys: Keys, scripts: dict[str, Script],
                 maxlen: int = 1_000_000, interval_s: float = 0.5,
                 lease_ms: int = LEADER_TTL_MS) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.engine = Engine(redis, keys, scripts)
        self.maxlen = maxlen
        self.interval_s = interval_s
        self.me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._outage = Throttled(log)
        self._trim_log = Throttled(log, 60.0)  # while a group stays behind, once a minute
        self.lease_ms = lease_ms
        self._renew_at = 0.0
        self._stop = asyncio.Event()

    async def lead(self) -> bool:
        script = self.scripts["lead"]
        leads = bool(await self.redis.evalsha(script, [self.keys.sidecar_leader()],
                                              [self.me, self.lease_ms]))
        if leads:  # renewed well before it runs out, so a long pass keeps it
            self._renew_at = time.monotonic() + self.lease_ms / 3000
        return leads

    async def keep_lead(self) -> None:
        """Between steps of a pass: renew the lease when due; NotLeader if it was lost
        (a pass longer than the lease must not let a second sidecar copy alongside)."""
        if time.monotonic() >= self._renew_at and not await self.lead():
            raise NotLeader

    async def _count(self, field: str, by: int) -> None:
        if by:
            await self.redis.execute("HINCRBY", self.keys.sidecar_stats(), field, by)

    async def end_sessions(self, pool_id: str) -> int:
        return await self.engine.end_sessions(pool_id, BATCH)

    async def copy_outbox(self, pool_id: str) -> int:
        outbox, sessions = self.keys.outbox(pool_id), self.keys.sessions_stream()
        copied = 0
        while True:
            await self.keep_lead()
            entries = await self.redis.execute("XRANGE", outbox, "-", "+", "COUNT", BATCH)
            if not entries:
                return copied
            records = outbox_records(entries)
            batch = [[x for kv in consumer_fields(rec).items() for x in kv] for rec in records]
            # Still the leader, right before writing (which renews the lease): one that
            # stalled past its lease after reading the batch (a long pause) must not copy
            # it after the new leader has. No cap on these writes: the retention check
            # after the copy trims, counting what consumer groups had not read.
            if not await self.lead():
                raise NotLeader
            # one pipelined batch, in order; the lease lengths go to the pool's minute
            # buckets, where the admin API's sizing reads its holding time (stats.py)
            await asyncio.gather(*(self.redis.execute("XADD", sessions, "*", *flat_fields)
                                   for flat_fields in batch),
                                 *tally_ended(self.redis, self.keys, pool_id, records))
            await self.redis.execute("XDEL", outbox, *(entry_id for entry_id, _ in entries))
            copied += len(entries)
            await asyncio.sleep(0)

    async def _unread(self, stream: str, first_dropped: Any, last_dropped: Any,
                      excess: int) -> dict[str, int]:
        """For each consumer group: how many of the entries the trim drops (the `excess`
        oldest, `first_dropped` .. `last_dropped`) it has not acknowledged: delivered and
        pending, or not yet delivered (after its last-delivered id). Pending ids older
        than `first_dropped` were dropped by an earlier trim and counted then."""
        try:
            groups = await self.redis.execute("XINFO", "GROUPS", stream)
        except Exception:  # noqa: BLE001 - no groups yet
            return {}
        out: dict[str, int] = {}
        for group in groups:
            info = {_s(group[i]): group[i + 1] for i in range(0, len(group), 2)}
            name, last_delivered = _s(info["name"]), _s(info["last-delivered-id"])
            pending = await self.redis.execute("XPENDING", stream, name, _s(first_dropped),
                                               _s(last_dropped), excess)
            behind, start = 0, "(" + last_delivered
            while _id(last_delivered) < _id(last_dropped):  # counted a page at a time
                page = await self.redis.execute("XRANGE", stream, start, _s(last_dropped),
                                                "COUNT", 1000)
                behind += len(page)
                if len(page) < 1000:
                    break
                start = "(" + _s(page[-1][0])
            out[name] = len(pending) + behind
        return out

    async def check_retention(self, stream: str) -> None:
        """Trim `stream` to the retention bound; warn when that drops unacknowledged
        entries of a consumer group."""
        length = await self.redis.execute("XLEN", stream)
        excess = length - self.maxlen
        if excess <= 0:
            return
        # the id of the last entry the trim drops, read a page at a time (after a long
        # stop the excess can be as long as the retention itself)
        first_dropped = last_dropped = None
        start, left = "-", excess
        while left > 0:
            page = await self.redis.execute("XRANGE", stream, start, "+", "COUNT",
                                            min(left, 1000))
            if not page:
                break
            if first_dropped is None:
                first_dropped = page[0][0]
            last_dropped, left = page[-1][0], left - len(page)
            start = "(" + _s(last_dropped)
        if last_dropped is None:
            return
        dropped_pending = 0
        for name, unread in (await self._unread(stream, first_dropped, last_dropped,
                                                excess)).items():
            if unread:
                dropped_pending += unread
                self._trim_log.warn("trimming %s to %d entries drops %d entries that group "
                                    "%r has not acknowledged", stream, self.maxlen, unread,
                                    name)
        await self.redis.execute("XTRIM", stream, "MINID", _next_id(_s(last_dropped)))
        await self._count("trimmed", excess)
        await self._count("trim_dropped_pending", dropped_pending)

    async def _pool_step(self, pool_id: str, done: dict[str, int]) -> int:
        """One pool's share of a pass: report ended leases, copy the outbox. Returns how
        many entries it copied."""
        try:
            await self.keep_lead()
            # (each result is awaited before it is added: `done[k] += await ...` would read
            # the total before the await, losing what the pools alongside added meanwhile)
            ended = await self.end_sessions(pool_id)
            done["ended_reported"] += ended
            copied = await self.copy_outbox(pool_id)
            done["copied"] += copied
            return copied
        except NotLeader:
            raise
        except RedisUnavailable as exc:
            # This pool's node or slot (on a Cluster: a node down, a slot in migration),
            # or Redis as a whole? The leader lease answers: when it does, the other
            # pools are served, so go on with them.
            if not await self.lead():  # RedisUnavailable: Redis is gone
                raise NotLeader from None
            self._outage.warn("sidecar: pool %s: %s", pool_id, exc)
        except RedisError as exc:  # Redis refuses (full, read-only...): every pool will
            self._outage.warn("sidecar: pool %s: %s", pool_id, exc)  # say the same
        except Exception:  # noqa: BLE001 - one pool's failure must not stop the others
            log.exception("sidecar: pool %s failed; going on with the others", pool_id)
        return 0

    async def cycle(self) -> dict[str, int]:
        """One pass over every pool. Returns what it did."""
        done = {"copied": 0, "ended_reported": 0}
        pool_ids = sorted(_s(p) for p in await self.redis.execute(
            "SMEMBERS", self.keys.pool_index()))
        # A few pools at a time: their commands share the connection's writes and reads
        # (a pass over 10,000 idle pools one by one took most of a second)
        for i in range(0, len(pool_ids), POOLS_AT_ONCE):
            copied = await asyncio.gather(*(self._pool_step(pool_id, done)
                                            for pool_id in pool_ids[i:i + POOLS_AT_ONCE]))
            # a large backlog may overflow the retention: trim (counting what consumer
            # groups had not read) before copying on, once per group of pools (checks
            # running alongside would each count the same trim); else once, after the pass
            if any(copied) and await self.redis.execute(
                    "XLEN", self.keys.sessions_stream()) > SAFETY_CAP * self.maxlen:
                await self.check_retention(self.keys.sessions_stream())
        # Deleted pools: no script writes to their outbox any more (every one checks the
        # pool exists first), so once it is copied it can go.
        draining = self.keys.draining_pools()
        for pool_id in sorted(_s(p) for p in await self.redis.execute("SMEMBERS", draining)):
            done["copied"] += await self.copy_outbox(pool_id)
            await self.redis.execute("DEL", self.keys.outbox(pool_id))
            await self.redis.execute("SREM", draining, pool_id)
        for stream in (self.keys.sessions_stream(), self.keys.calls_stream()):
            await self.check_retention(stream)
        await self._count("copied", done["copied"])
        await self._count("ended_reported", done["ended_reported"])
        await self._count("cycles", 1)
        return done

    async def run(self) -> None:
        """Lead or stand by, one cycle per interval, until stop(); errors are logged.
        On stop the lease is given up, so another sidecar takes over at once."""
        while not self._stop.is_set():
            try:
                if await self.lead():
                    await self.cycle()
            except NotLeader:
                log.info("sidecar %s lost the leader lease during a pass", self.me)
            except (RedisUnavailable, RedisError) as exc:  # an outage, a full Redis...:
                self._outage.warn("sidecar: %s", exc)  # a line now and then, no traceback
            except Exception:  # noqa: BLE001 - keep running; Redis may come back
                log.exception("sidecar cycle failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
        await self.release()

    async def release(self) -> None:
        """Give the leader lease up (if this sidecar holds it)."""
        try:
            await self.redis.evalsha(self.scripts["unlock"], [self.keys.sidecar_leader()],
                                     [self.me])
        except Exception:  # noqa: BLE001 - Redis gone: the lease runs out by itself
            pass

    def stop(self) -> None:
        self._stop.set()


def _id(raw: Any) -> tuple[int, int]:
    ms, _, seq = _s(raw).partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> str:
    ms, seq = _id(entry_id)
    return f"{ms}-{seq + 1}"
