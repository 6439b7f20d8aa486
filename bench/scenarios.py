"""The `dni bench` scenarios: edge, engine, pressure, naive, and the generator check."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

from . import loadgen
from .common import BACKUP, HERE, Broker, LocalRedis, make_pool, run_wrk
from .naive import double_assignments


def _model(args: argparse.Namespace) -> dict:
    return {"new_share": args.new_share, "pages": args.pages, "visit_s": args.visit_s,
            "heartbeat_s": args.heartbeat_s, "speed": args.speed}


def _spec(args: argparse.Namespace, target: str, **kw: Any) -> loadgen.Spec:
    base = dict(target=target, rate=args.rate or 0.0, duration=args.duration,
                procs=args.procs, connections=args.connections, model=_model(args),
                tag=uuid.uuid4().hex[:6], warmup=getattr(args, "warmup", 0.0) or 0.0)
    base.update(kw)
    return loadgen.Spec(**base)


def _ttl_s(args: argparse.Namespace) -> int:
    """The pool's session length in compressed time (the API takes whole seconds >= 1)."""
    return max(1, round(args.session_s / args.speed))


def _max_then_fraction(args: argparse.Namespace, make: Any, label: str) -> list[tuple[str, dict]]:
    """--rate R: one open-loop run at R. Otherwise: the highest throughput (closed loop),
    then open loop at --load-fraction of it (latency at half the peak, say). --ramp: open
    loop at rising rates until p99 passes --p99-ms."""
    runs: list[tuple[str, dict]] = []
    if args.rate:
        runs.append((f"{label} open {args.rate:.0f}/s", loadgen.run(make(rate=args.rate),
                                                                   not args.quiet)))
        return runs
    peak = loadgen.run(make(closed=True), not args.quiet, "max ")
    runs.append((f"{label} max (closed loop)", peak))
    if args.ramp:
        rate = peak["throughput"] * 0.25
        passed = None
        while rate <= peak["throughput"] * 1.2:
            r = loadgen.run(make(rate=rate), not args.quiet, f"{rate:.0f}/s ")
            runs.append((f"{label} open {rate:.0f}/s", r))
            if (r["latency_ms"].get("p99", 1e9) > args.p99_ms or r["errors"]
                    or r["unfinished"] > 0.01 * max(r["requests"], 1)):
                break
            passed = rate
            rate *= 1.25
        print(f"highest rate with p99 <= {args.p99_ms} ms, no errors and nothing left "
              f"unanswered: " + (f"{passed:.0f}/s" if passed else "none of the rates tried"))
        return runs
    rate = peak["throughput"] * args.load_fraction
    runs.append((f"{label} open {rate:.0f}/s ({args.load_fraction:g} x max)",
                 loadgen.run(make(rate=rate), not args.quiet, "open ")))
    return runs


def _api_pool(url: str, token: str | None, args: argparse.Namespace, ctx: ExitStack) -> str:
    """A pool of --pool-size fictional numbers in someone's running broker, through its
    admin API: a random block of numbers (another block if one is in use, by an earlier
    run, say), added 10,000 at a time (the API's limit), and deleted when the run ends."""
    import random

    import httpx

    http = ctx.enter_context(httpx.Client(base_url=url, timeout=120,
                                          headers={"Authorization": f"Bearer {token}"}))
    for _ in range(5):
        start = random.randrange(10_000_000 - args.pool_size)
        numbers = [f"+1555{start + i:07d}" for i in range(args.pool_size)]
        r = http.post("/v1/pools", json={"name": "dni bench", "session_ttl_s": _ttl_s(args),
                                          "numbers": numbers[:10_000],
                                          "fallback_number": BACKUP})
        if r.status_code == 409:
            continue  # a number of the block is in use: another block
        r.raise_for_status()
        pool_id = r.json()["id"]
        ctx.callback(lambda pid=pool_id: http.delete(f"/v1/pools/{pid}"))  # before http closes
        for i in range(10_000, args.pool_size, 10_000):
            r = http.post(f"/v1/pools/{pool_id}/numbers", json={"numbers": numbers[i:i + 10_000]})
            if r.status_code == 409:
                break
            r.raise_for_status()
        else:
            return pool_id
    raise SystemExit("dni bench: no free block of fictional +1555 numbers for the bench pool "
                     "(5 tries); give --pool an existing pool")


def edge(args: argparse.Namespace, ctx: ExitStack, out: dict) -> list[tuple[str, dict]]:
    """HTTP load on POST /v1/dni/session and /v1/dni/heartbeat of a broker."""
    if args.url:
        url, token = args.url.rstrip("/"), args.token
        admin = None
        if args.redis_url:  # the broker's Redis, for the record only
            out["redis_url"] = args.redis_url
    else:
        broker = ctx.enter_context(Broker(args.workers, args.redis_url))
        url, token, admin = broker.url, broker.token, broker
        out["redis_url"] = broker.redis_url

    def pool() -> str:
        if args.pool:
            return args.pool
        if admin is not None:
            return admin.create_pool(args.pool_size, ttl_s=_ttl_s(args))
        return _api_pool(url, token, args, ctx)

    return _max_then_fraction(args, lambda **kw: _spec(args, "http", url=url, pool_id=pool(),
                                                       **kw), "edge")


def engine(args: argparse.Namespace, ctx: ExitStack, out: dict) -> list[tuple[str, dict]]:
    """The same visitor model straight against the Lua scripts (no HTTP)."""
    redis = ctx.enter_context(LocalRedis(args.redis_url))
    out["redis_url"] = redis.url

    def make(**kw: Any) -> loadgen.Spec:
        pool_id = make_pool(redis.client, args.pool_size, _ttl_s(args) * 1000)
        return _spec(args, "engine", redis_url=redis.url, pool_id=pool_id, **kw)

    return _max_then_fraction(args, make, "engine")


def pressure(args: argparse.Namespace, ctx: ExitStack, out: dict) -> list[tuple[str, dict]]:
    """Arrivals against a pool of a given size and session length: fallback rate and
    utilization over time (sampled each second from Redis)."""
    from broker.keys import Keys
    from broker.scripts import load_scripts

    redis = ctx.enter_context(LocalRedis(args.redis_url))
    out["redis_url"] = redis.url
    ttl_ms = int(args.session_s / args.speed * 1000)
    pool_id = make_pool(redis.client, args.pool_size, ttl_ms)
    keys = Keys()
    end = load_scripts()["end_sessions"]
    redis.client.script_load(end.body)
    end_keys = [keys.pool(pool_id), keys.numbers(pool_id), keys.inactive(pool_id),
                keys.holders(pool_id), keys.outbox(pool_id)]
    samples: list[dict] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            # what the admin API's stats count: first bring the scores of refreshed
            # sessions up to date (the sidecar's walk; this scenario runs no sidecar)
            while redis.client.evalsha(end.sha, len(end_keys), *end_keys, pool_id, 500)[1]:
                pass
            sec, usec = redis.client.time()
            now = sec * 1000 + usec // 1000
            held = redis.client.zcount(keys.numbers(pool_id), f"({now}", "+inf")
            samples.append({"t_s": round(time.monotonic() - t0, 1), "live_sessions": held,
                            "utilization": round(held / args.pool_size, 3)})

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rate = args.rate or 200.0
    # no warm-up: the scenario watches a pool from its start (and the admin API's figures
    # are over the pool's age)
    spec = _spec(args, "engine", rate=rate, redis_url=redis.url, pool_id=pool_id,
                 record_blocked=True, warmup=0.0)
    res = loadgen.run(spec, not args.quiet, "pressure ")
    blocked = res.pop("blocked_visitors", [])
    stop.set()
    th.join()
    st = res["statuses"]
    sessions = sum(st.get(k, 0) for k in ("new", "reused", "fallback", "unavailable"))
    sizing = asyncio.run(_admin_sizing(redis.url, pool_id, st, blocked,
                                       args.heartbeat_s / args.speed))
    # Little's law: live sessions = the rate sessions start x how long a lease is held
    # (the admin API's holding time: the leases that ended during the run)
    new_per_s = st.get("new", 0) / res["elapsed_s"] if res["elapsed_s"] else 0.0
    arrivals = st.get("new", 0) + len(blocked)
    out["pressure"] = {
        "pool_size": args.pool_size, "session_s": args.session_s, "rate": rate,
        # per visitor, as the admin API's fallback_probability: the distinct visitors
        # turned away at least once, of those who arrived (started a session or were)
        "turned_away_share": round(len(blocked) / arrivals, 4) if arrivals else None,
        # per answer: returning visitors' pages and the retries of the turned away count
        "fallback_share_of_answers": round(st.get("fallback", 0) / sessions, 4)
        if sessions else None,
        "utilization_over_time": samples,
        "peak_utilization": max((s["utilization"] for s in samples), default=None),
        "estimated_live_sessions_littles_law": round(new_per_s * sizing["holding_time_s"]),
        # what GET /v1/pools/{id}/stats answers for this pool after the run, its answer
        # counts being the run's (this scenario calls the scripts, not the edge)
        "recommended_size_admin_api": sizing["recommended_size"],
        "admin_api_sizing": sizing,
    }
    return [("pressure", res)]


async def _admin_sizing(redis_url: str, pool_id: str, statuses: dict, blocked: list[str],
                        heartbeat_s: float) -> dict:
    """The admin API's sizing of the pool, fed the run's answers as the edge would."""
    from broker.engine import Engine
    from broker.keys import Keys
    from broker.redisconn import PipelinedRedis
    from broker.scripts import load_scripts
    from broker.sidecar import outbox_records, tally_ended
    from broker.stats import BUCKET_TTL_S, FIELDS, HOUR_MS, PRESSURE_PCT, pool_stats

    conn = PipelinedRedis(redis_url)
    try:
        scripts = load_scripts()
        await conn.load_scripts(list(scripts.values()))
        keys = Keys()
        engine = Engine(conn, keys, scripts)
        if not await conn.execute("EXISTS", keys.sidecar_leader()):
            # no sidecar runs here: tally the lease lengths of the sessions that ended (in
            # the outbox, reported by the sampler's end_sessions) as it would
            entries = await conn.execute("XRANGE", keys.outbox(pool_id), "-", "+")
            await asyncio.gather(*tally_ended(conn, keys, pool_id, outbox_records(entries)))
        counts = {f: statuses[f] for f in FIELDS if statuses.get(f)}
        if counts:
            await engine.record_counts(pool_id, int(time.time() // 60), counts, BUCKET_TTL_S,
                                       PRESSURE_PCT, HOUR_MS, blocked)
        # the admin API's figures are per second of real time, over the pool's age; the
        # heartbeat interval (for the visit length) is the compressed one
        return (await pool_stats(engine, pool_id, max(1, round(heartbeat_s))))["sizing"]
    finally:
        await conn.close()


def naive(args: argparse.Namespace, ctx: ExitStack, out: dict) -> list[tuple[str, dict]]:
    """The naive read-choose-write baseline and the Lua engine, side by side, each on a
    fresh pool of the same size and session length, under the same closed-loop contention
    (every request a new visitor). Double assignments are counted from the answers."""
    redis = ctx.enter_context(LocalRedis(args.redis_url))
    out["redis_url"] = redis.url
    ttl_ms = int(args.session_s * 1000)
    model = {"new_share": 1.0, "pages": 1.0, "visit_s": 1.0, "heartbeat_s": 0.0, "speed": 1.0}
    runs = []
    summary = {}
    for r in range(args.rounds):
        for target in ("naive", "engine"):
            pool_id = make_pool(redis.client, args.pool_size, ttl_ms)
            spec = _spec(args, target, closed=True, redis_url=redis.url, pool_id=pool_id,
                         ttl_ms=ttl_ms, model=model, record_leases=True)
            res = loadgen.run(spec, not args.quiet, f"{target} ")
            leases = res.pop("leases")
            res["double_assignments"] = double_assignments(leases, ttl_ms)
            res["leases"] = len(leases)
            s = summary.setdefault(target, {"double_assignments": 0, "throughput": []})
            s["double_assignments"] += res["double_assignments"]
            s["throughput"].append(round(res["throughput"]))
            runs.append((f"{target} round {r + 1}", res))
    out["naive"] = summary
    return runs


def wrk_check(args: argparse.Namespace, ctx: ExitStack, out: dict) -> list[tuple[str, dict]]:
    """Is the generator the bottleneck? wrk and this generator, closed loop, on the same
    endpoint and connection count, alternating (new pool each run, 1 in 4 requests from a
    new visitor, as in bench/wrk_session.lua with DNI_NEW_SHARE=0.25)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    broker = ctx.enter_context(Broker(args.workers, args.redis_url))
    out["redis_url"] = broker.redis_url
    runs = []
    model = {"new_share": 1.0, "pages": 4.0, "visit_s": 60.0, "heartbeat_s": 0.0, "speed": 1.0}
    for r in range(args.rounds):
        pool_id = broker.create_pool(args.pool_size, start=(3 * r) * args.pool_size)
        w = run_wrk(broker.url + "/v1/dni/session", args.duration, args.connections,
                    script=str(HERE / "wrk_session.lua"),
                    env={"DNI_POOL": pool_id, "DNI_NEW_SHARE": "0.25"})
        runs.append((f"wrk round {r + 1}", {"throughput": w["rps"], "requests": w["requests"],
                                            "errors": w["non_2xx"], "statuses": {}}))
        for procs in sorted({1, args.procs}):
            pool_id = broker.create_pool(args.pool_size, start=(3 * r + procs) * args.pool_size)
            spec = _spec(args, "http", closed=True, url=broker.url, pool_id=pool_id,
                         procs=procs, model=model)
            runs.append((f"dni-bench {procs}p round {r + 1}",
                         loadgen.run(spec, not args.quiet, f"{procs}p ")))
    best: dict[str, list[float]] = {}
    for name, res in runs:
        best.setdefault(name.rsplit(" round", 1)[0], []).append(res["throughput"])
    import statistics

    med = {k: statistics.median(v) for k, v in best.items()}
    out["wrk_check"] = {"median_rps": med,
                        "ratio_vs_wrk": {k: round(v / med["wrk"], 3) for k, v in med.items()}}
    return runs


SCENARIOS = {"edge": edge, "engine": engine, "pressure": pressure, "naive": naive,
             "wrk-check": wrk_check}
