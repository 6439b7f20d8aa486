"""The load generator: open-loop scheduled arrivals from worker processes, HDR histograms.

Each worker process runs its own event loop (uvloop when installed) and its share of the
visitor model's schedule (`rate / procs`). A request is due at its scheduled time; when
every connection (HTTP) or in-flight slot (Redis) is busy it waits in a backlog, and its
latency is measured from the scheduled time, so queueing shows (no coordinated
omission). `send_lag` is how late the generator itself put a request on the wire: when
it grows, the generator, not the server, is the bottleneck.

`closed=True` instead keeps every connection busy (a new request as soon as the last one
is answered, like wrk): that measures the highest throughput, not latency.

Targets:
  http    POST /v1/dni/session and /v1/dni/heartbeat of a broker (raw HTTP/1.1
          keep-alive connections, httptools parser);
  engine  the Lua scripts straight through the broker's own Redis client and Engine;
  naive   a non-atomic read-choose-write assignment from Python (see naive.py).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from hdrh.histogram import HdrHistogram

from .model import HEARTBEAT, SESSION, VisitorModel

MAX_US = 60_000_000


def new_hist() -> HdrHistogram:
    return HdrHistogram(1, MAX_US, 3)


@dataclass
class Spec:
    target: str  # http | engine | naive
    rate: float  # total requests/s over all processes (open loop)
    duration: float
    procs: int = 1
    connections: int = 64  # total over all processes
    closed: bool = False
    url: str = ""  # http: the broker's base URL
    redis_url: str = ""  # engine/naive
    key_prefix: str = "dni"
    pool_id: str = ""
    ttl_ms: int = 0  # naive: the pool's session length
    model: dict = field(default_factory=dict)  # VisitorModel keyword arguments
    record_leases: bool = False
    record_blocked: bool = False  # the visitors answered fallback/unavailable (pressure)
    grace: float = 5.0
    tag: str = ""  # visitor id prefix (unique per run)
    # Seconds of load before measuring (open loop): the run starts with visits already in
    # progress whose sessions do not exist yet, so its first seconds start more sessions
    # than the model's steady state. Everything is counted from the end of the warm-up.
    warmup: float = 0.0


# --- targets: each slot sends one request at a time and calls back with (label, sid) ----

class _HttpSlot(asyncio.Protocol):
    def __init__(self, done: Callable, host: str) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.done = done
        self.host = host.encode()
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.item: Any = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, spec: Spec, op: int, vid: str, sid: str | None) -> None:
        if op == SESSION:
            path = b"/v1/dni/session"
            body = (b'{"pool_id":"%s","visitor_id":"%s","landing_page":"https://example.com/'
                    b'?utm_source=google","utm_source":"google","utm_medium":"cpc",'
                    b'"referrer":"https://www.google.com/"}'
                    % (spec.pool_id.encode(), vid.encode()))
        else:
            path = b"/v1/dni/heartbeat"
            body = b'{"pool_id":"%s","visitor_id":"%s","session_id":"%s"}' % (
                spec.pool_id.encode(), vid.encode(), sid.encode())
        self.busy = True
        if self.transport is None:  # closed by the server: an error, and the slot retires
            asyncio.get_running_loop().call_soon(self.connection_lost, None)
            return
        self.transport.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                             b"User-Agent: dni-bench\r\nContent-Length: %d\r\n\r\n%s"
                             % (path, self.host, len(body), body))

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        import orjson

        code = self.parser.get_status_code()
        body = b"".join(self.body)
        self.body = []
        self.busy = False
        if code == 200:
            d = orjson.loads(body)
            self.done(self, d["status"], d.get("session_id"), d.get("number"),
                      d.get("expires_at"))
        else:
            self.done(self, f"http_{code}", None, None, None)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.done(self, "error", None, None, None)


class _CoroSlot:
    """A slot whose request is a coroutine (engine and naive targets)."""

    def __init__(self, done: Callable, call: Callable) -> None:
        self.done = done
        self.call = call
        self.item: Any = None

    def send(self, spec: Spec, op: int, vid: str, sid: str | None) -> None:
        asyncio.ensure_future(self.call(op, vid, sid)).add_done_callback(self._finish)

    def _finish(self, fut: asyncio.Future) -> None:
        try:
            label, sid, number, exp = fut.result()
        except Exception:  # noqa: BLE001 - counted as an error
            label, sid, number, exp = "error", None, None, None
        self.done(self, label, sid, number, exp)


async def _make_slots(spec: Spec, n: int, done: Callable) -> tuple[list, Callable]:
    if spec.target == "http":
        from urllib.parse import urlsplit

        u = urlsplit(spec.url)
        loop = asyncio.get_running_loop()
        slots = []
        for _ in range(n):
            _, slot = await loop.create_connection(lambda: _HttpSlot(done, u.netloc),
                                                   u.hostname, u.port or 80)
            slots.append(slot)
        return slots, lambda: None
    from broker.engine import Engine
    from broker.keys import Keys
    from broker.redisconn import PipelinedRedis
    from broker.settings import Settings

    redis = PipelinedRedis(spec.redis_url)
    source = b'127.0.0.1\ndni-bench\n{"utm_source":"google","utm_medium":"cpc"}'
    # the call grace period of a broker run with the defaults (session-5.lua's ARGV[6])
    engine = Engine(redis, Keys(spec.key_prefix), grace_ms=Settings().call_grace_s * 1000)
    if spec.target == "engine":
        async def call(op: int, vid: str, sid: str | None):
            if op == SESSION:
                r = await engine.session(spec.pool_id, vid, source)
                return r.status, r.session_id, r.number, r.expires_at
            r = await engine.heartbeat(spec.pool_id, vid, sid)
            return r.status, None, r.number, r.expires_at
    else:
        from .naive import NaiveEngine

        naive = NaiveEngine(redis, Keys(spec.key_prefix), spec.ttl_ms)

        async def call(op: int, vid: str, sid: str | None):
            return await naive.session(spec.pool_id, vid)
    return [_CoroSlot(done, call) for _ in range(n)], redis.close


# --- one worker process -----------------------------------------------------------------

async def _run_worker(spec: Spec, index: int, report: Any) -> dict:
    per_rate = spec.rate / spec.procs
    share = spec.connections // spec.procs + (1 if index < spec.connections % spec.procs else 0)
    model = VisitorModel(rate=max(per_rate, 1e-9), seed=index * 7919 + int(time.time()),
                         prefix=f"{spec.tag}{index}-", **spec.model)
    hist, lag, interval, service = new_hist(), new_hist(), new_hist(), new_hist()
    statuses: Counter = Counter()
    sids: dict[str, str] = {}
    leases: list[tuple] = []
    blocked: set[str] = set()
    backlog: deque = deque()
    free: deque = deque()  # FIFO: every connection stays in use (idle ones get closed)
    state = {"sent": 0, "done": 0, "skipped": 0, "stopping": False}
    t0 = 0.0
    clock = time.perf_counter

    def _beat_or_land(item: tuple) -> tuple | None:
        """A heartbeat needs its session: none when the session was answered without one
        (fallback: the snippet would not beat); a visit in progress when the run began
        (its landing page predates the run) lands now instead."""
        if item[1] == HEARTBEAT and not sids.get(item[2]):
            if item[2] in sids:
                state["skipped"] += 1
                return None
            sids[item[2]] = ""
            return (item[0], SESSION, item[2])
        return item

    def start(slot: Any, item: tuple) -> None:
        t_sched, op, vid = item
        sid = sids[vid] if op == HEARTBEAT else None
        now = clock() - t0
        slot.item = (t_sched if not spec.closed else now, now, op, vid)
        lag.record_value(max(1, min(MAX_US, int((now - t_sched) * 1e6))) if not spec.closed else 1)
        state["sent"] += 1
        slot.send(spec, op, vid, sid)

    def take() -> tuple | None:
        while True:
            if spec.closed:
                if state["stopping"]:
                    return None
                op, vid = model.any()
                item = (clock() - t0, op, vid)
            elif backlog:
                item = backlog.popleft()
            else:
                return None
            item = _beat_or_land(item)
            if item is not None:
                return item

    def done(slot: Any, label: str, sid: str | None, number: Any, exp: Any) -> None:
        t_sched, t_sent, op, vid = slot.item
        now = clock() - t0
        us = max(1, min(MAX_US, int((now - t_sched) * 1e6)))
        hist.record_value(us)
        service.record_value(max(1, min(MAX_US, int((now - t_sent) * 1e6))))
        interval.record_value(us)
        statuses[label] += 1
        state["done"] += 1
        if op == SESSION:
            sids[vid] = sid or None
        if label == "new" and spec.record_leases:
            leases.append((number, vid, exp))
        if spec.record_blocked and label in ("fallback", "unavailable"):
            blocked.add(vid)
        if slot.__class__ is _HttpSlot and slot.transport is None:
            slots.remove(slot)  # connection gone: one slot fewer
            return
        nxt = take()
        if nxt is None:
            free.append(slot)
        else:
            start(slot, nxt)

    if not spec.closed:
        model.prime()  # first: connections left idle for long are closed by the server
    slots, close = await _make_slots(spec, max(1, share), done)
    free.extend(slots)
    t0 = clock()
    t_measured = 0.0
    last_report = 0.0
    if spec.closed:
        for slot in list(free):
            free.remove(slot)
            nxt = take()
            if nxt:
                start(slot, nxt)
    warm = spec.warmup if not spec.closed else 0.0
    while True:
        elapsed = clock() - t0
        if warm and elapsed >= warm:  # the measured run starts now
            warm = 0.0
            for h in (hist, lag, service, interval):
                h.reset()
            statuses.clear()
            blocked.clear()
            state["done"] = 0
            state["skipped"] = 0
            t_measured = elapsed
        if elapsed >= spec.duration + spec.warmup * (not spec.closed):
            break
        if not spec.closed:
            for item in model.due(elapsed):
                item = _beat_or_land(item)
                if item is None:
                    pass
                elif free:  # (a free slot means the backlog is empty)
                    start(free.popleft(), item)
                else:
                    backlog.append(item)
        if elapsed - last_report >= 1.0:
            last_report = elapsed
            report.put(("progress", index, elapsed, state["done"],
                        sum(v for k, v in statuses.items() if k in ERRORS or k.startswith("http_")),
                        interval.encode(), len(backlog)))
            interval = new_hist()
        wait = (model.next_at() - (clock() - t0)) if not spec.closed else 0.05
        await asyncio.sleep(min(max(wait, 0.001), 0.05))  # ticks of >= 1 ms: batches
    state["stopping"] = True
    unfinished_backlog = len(backlog)
    # Requests the run scheduled but never sent still count in the latency, at what they
    # had waited when it ended (a lower bound): leaving them out would hide the queueing.
    end = clock() - t0
    for item in backlog:
        hist.record_value(max(1, min(MAX_US, int((end - item[0]) * 1e6))))
    backlog.clear()
    deadline = clock() + spec.grace
    while len(free) < len(slots) and clock() < deadline:
        await asyncio.sleep(0.01)
    in_flight = len(slots) - len(free)
    end = clock() - t0
    for slot in slots:  # sent but not answered within the grace period: the same
        if slot not in free and slot.item is not None:
            hist.record_value(max(1, min(MAX_US, int((end - slot.item[0]) * 1e6))))
    elapsed = end - t_measured
    for s in slots:
        if isinstance(s, _HttpSlot) and s.transport is not None:
            s.transport.close()
    res = close()
    if asyncio.iscoroutine(res):
        await res
    return {"hist": hist.encode(), "lag": lag.encode(), "service": service.encode(), "statuses": dict(statuses),
            "sent": state["sent"], "done": state["done"], "skipped_heartbeats": state["skipped"],
            "unfinished": unfinished_backlog + in_flight, "elapsed": elapsed,
            "cpu_s": time.process_time(), "leases": leases, "blocked": sorted(blocked)}


ERRORS = {"error", "no_pool"}


def _worker_main(spec: Spec, index: int, report: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        out = asyncio.run(_run_worker(spec, index, report))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report.put(("failed", index, repr(exc)))
        return
    report.put(("final", index, out))


# --- the parent: start workers, show progress, merge ------------------------------------

def run(spec: Spec, progress: bool = True, label: str = "") -> dict:
    """Run `spec` over `spec.procs` processes; return merged figures."""
    ctx = mp.get_context("fork")
    report = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(spec, i, report), daemon=True)
             for i in range(spec.procs)]
    for p in procs:
        p.start()
    finals: dict[int, dict] = {}
    window: dict[int, tuple] = {}
    started = time.monotonic()
    last_print = 0.0
    prev_done = 0
    prev_t = 0.0
    tty_line = False
    while len(finals) < len(procs):
        try:
            msg = report.get(timeout=spec.duration + spec.grace + 30)
        except Exception as exc:  # queue.Empty
            raise RuntimeError("bench worker stopped answering") from exc
        if msg[0] == "failed":
            for p in procs:
                p.kill()
            raise RuntimeError(f"bench worker {msg[1]} failed: {msg[2]}")
        if msg[0] == "final":
            finals[msg[1]] = msg[2]
            continue
        _, idx, elapsed, done, errors, enc, backlog = msg
        window[idx] = (elapsed, done, errors, enc, backlog)
        now = time.monotonic() - started
        if progress and now - last_print >= 1.0 and len(window) == len(procs):
            total_done = sum(w[1] for w in window.values())
            h = new_hist()
            for w in window.values():
                h.add(HdrHistogram.decode(w[3]))
            rate = (total_done - prev_done) / max(now - prev_t, 1e-6)
            prev_done, prev_t, last_print = total_done, now, now
            line = (f"{label}[{now:5.1f}s/{spec.duration:.0f}s] {rate:8.0f} req/s  "
                    f"p99 {h.get_value_at_percentile(99) / 1000:7.2f} ms  "
                    f"errors {sum(w[2] for w in window.values())}  "
                    f"backlog {sum(w[4] for w in window.values())}")
            import sys

            if sys.stderr.isatty():
                sys.stderr.write("\r" + line.ljust(100))
                tty_line = True
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
    for p in procs:
        p.join(10)
    if tty_line:
        import sys

        sys.stderr.write("\n")
    return merge(spec, [finals[i] for i in sorted(finals)])


def merge(spec: Spec, parts: list[dict]) -> dict:
    hist, lag, service = new_hist(), new_hist(), new_hist()
    statuses: Counter = Counter()
    leases: list = []
    for p in parts:
        hist.add(HdrHistogram.decode(p["hist"]))
        lag.add(HdrHistogram.decode(p["lag"]))
        service.add(HdrHistogram.decode(p["service"]))
        statuses.update(p["statuses"])
        leases += p["leases"]
    elapsed = max(p["elapsed"] for p in parts)
    done = sum(p["done"] for p in parts)
    errors = sum(v for k, v in statuses.items() if k in ERRORS or k.startswith("http_"))
    spec_d = asdict(spec)
    out = {
        "spec": spec_d,
        "requests": done,
        "throughput": done / max(elapsed, spec.duration) if elapsed else 0.0,
        "offered_rate": None if spec.closed else spec.rate,
        "statuses": dict(sorted(statuses.items())),
        "errors": errors,
        "unfinished": sum(p["unfinished"] for p in parts),
        "skipped_heartbeats": sum(p["skipped_heartbeats"] for p in parts),
        "latency_ms": percentiles(hist),
        "send_lag_ms": percentiles(lag),
        # from the moment the request was written: what the latency would be with no
        # generator lag (the same as latency_ms in closed-loop runs)
        "service_ms": percentiles(service),
        "new_session_share": None,  # filled below
        "generator_cpu_s": round(sum(p["cpu_s"] for p in parts), 2),
        "elapsed_s": round(elapsed, 2),
    }
    out["new_session_share"] = new_session_share(out)
    if spec.record_leases:
        out["leases"] = leases
    if spec.record_blocked:
        out["blocked_visitors"] = sorted({v for p in parts for v in p["blocked"]})
    return out


def percentiles(h: HdrHistogram) -> dict:
    if h.get_total_count() == 0:
        return {}
    return {"p50": h.get_value_at_percentile(50) / 1000,
            "p90": h.get_value_at_percentile(90) / 1000,
            "p99": h.get_value_at_percentile(99) / 1000,
            "p99.9": h.get_value_at_percentile(99.9) / 1000,
            "max": h.get_max_value() / 1000,
            "mean": round(h.get_mean_value() / 1000, 3)}


def new_session_share(r: dict) -> float | None:
    """The share of answered session requests that started a session (new), measured."""
    st = r.get("statuses", {})
    sessions = sum(st.get(k, 0) for k in ("new", "reused", "fallback", "unavailable"))
    return round(st.get("new", 0) / sessions, 4) if sessions else None


def warnings(r: dict) -> list[str]:
    """What makes a run's figures doubtful: a late generator, requests left unanswered."""
    out = []
    lag = (r.get("send_lag_ms") or {}).get("p99")
    p99 = (r.get("latency_ms") or {}).get("p99")
    if r.get("offered_rate") and lag is not None and p99 and lag > max(1.0, 0.25 * p99):
        out.append(f"the generator sent late (send lag p99 {lag:.2f} ms of latency p99 "
                   f"{p99:.2f} ms): the latency is partly the generator's; try --procs 2 "
                   "or a lower rate")
    done = r.get("requests", 0)
    if r.get("unfinished", 0) > 0.01 * max(done, 1):
        out.append(f"{r['unfinished']} requests were not answered by the end (of {done} "
                   "done): the target did not keep up with the offered rate")
    return out


def table(rows: list[tuple[str, dict]]) -> str:
    """The final table: one row per run."""
    head = ("run", "req/s", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
            "lag p99", "new", "statuses")
    lines = [head]
    for name, r in rows:
        lat = r.get("latency_ms") or {}
        lag = (r.get("send_lag_ms") or {}).get("p99")
        share = new_session_share(r)
        st = " ".join(f"{k}={v}" for k, v in r.get("statuses", {}).items())
        lines.append((name, f"{r['throughput']:.0f}", str(r["requests"]),
                      str(r["errors"] + r.get("unfinished", 0)),
                      *(f"{lat[k]:.2f}" if k in lat else "-"
                        for k in ("p50", "p90", "p99", "p99.9")),
                      f"{lag:.2f}" if lag is not None and r.get("offered_rate") else "-",
                      f"{share:.0%}" if share is not None else "-", st))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 10) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in lines)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
