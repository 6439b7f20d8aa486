"""The Redis-side targets, measured with redis-benchmark and INFO on one Redis:

  engine-ratio  the session script's throughput vs `EVAL "return 1" 0` under the same
                redis-benchmark load (same -c, same -P), alternating rounds; then where its
                time goes (INFO commandstats: usec_per_call of EVALSHA and of each command
                the script runs) and the share of AOF propagation (appendonly yes vs no)
  scale         the script's cost on a 5-number vs a 100,000-number pool (assign path and
                reuse path) and with 1,000 vs 1,000,000 live sessions (same pool size)
  memory        Redis memory per live session over 100,000 sessions (INFO memory), outside
                the outbox stream and less the bytes of its attribution values

    dni bench engine-ratio [--clients 50] [--pipeline 1] [--requests 300000] [--rounds 3]
                           [--reuse]
    dni bench scale [--clients 50] [--requests 200000] [--live 1000000]
    dni bench memory [--sessions 100000]

Each starts the broker's embedded redis-server (AOF on, unix socket) unless --redis-url
names one (redis-benchmark then connects by host/port or socket from it).
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import subprocess
import time
from urllib.parse import urlsplit

from broker.settings import Settings

from .common import LocalRedis, dump, make_pool, metadata

UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
ATTRIBUTION = ('{"landing_page":"https://example.com/plumbing?utm_source=google&utm_medium=cpc",'
               '"referrer":"https://www.google.com/","utm_source":"google","utm_medium":"cpc",'
               '"utm_campaign":"spring"}')
IP = "203.0.113.7"
SOURCE = f"{IP}\n{UA}\n{ATTRIBUTION}"  # ARGV[5] of session-5.lua: all attribution values
SHORT_SOURCE = "127.0.0.1\nua\n{}"


def _base36(x: int) -> str:
    digits = ""
    while x:
        x, d = divmod(x, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
    return digits or "0"


def _scripts():
    from broker.scripts import load_scripts

    return load_scripts()


def _target(url: str) -> list[str]:
    u = urlsplit(url)
    if u.scheme == "unix":
        return ["-s", u.path]
    return ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]


def redis_benchmark(url: str, clients: int, pipeline: int, requests: int, keyspace: int,
                    *command: str) -> float:
    """requests/s of one redis-benchmark run of `command` (placeholders __rand_int__)."""
    if shutil.which("redis-benchmark") is None:
        raise SystemExit("redis-benchmark not found: apt-get install redis-tools")
    cmd = ["redis-benchmark", *_target(url), "-c", str(clients), "-P", str(pipeline),
           "-n", str(requests), "-r", str(keyspace), "--csv", *command]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # the test name (the command) is quoted without escaping: read the 7 figures at the end
    last = [line for line in out.splitlines() if line.strip()][-1]
    return float(last.rsplit(",", 7)[1].strip('"'))


# the call grace period of a broker run with the defaults (session-5.lua's ARGV[6])
GRACE_MS = str(Settings().call_grace_s * 1000)


def session_cmd(sha: str, pool_id: str, visitor: str = "__rand_int__",
                prefix: str = "dni") -> list[str]:
    p = f"{prefix}:{{{pool_id}}}"
    return ["EVALSHA", sha, "5", p + ":pool", p + ":numbers", p + ":holders",
            p + ":v:" + visitor, p + ":outbox",
            "s__rand_int__", "__rand_int__", visitor, pool_id, SOURCE, GRACE_MS]


def commandstats(client) -> dict:
    raw = client.info("commandstats")
    return {k[len("cmdstat_"):]: {"calls": v["calls"], "usec_per_call": v["usec_per_call"]}
            for k, v in raw.items()}


def preload(client, sha: str, pool_id: str, visitors: list[str], batch: int = 5000) -> None:
    """Give each visitor a live session (pipelined EVALSHA calls)."""
    p = f"dni:{{{pool_id}}}"
    for i in range(0, len(visitors), batch):
        pipe = client.pipeline(transaction=False)
        for v in visitors[i:i + batch]:
            pipe.evalsha(sha, 5, p + ":pool", p + ":numbers", p + ":holders", p + ":v:" + v,
                         p + ":outbox", "s" + v, i, v, pool_id, SOURCE)
        pipe.execute()
    client.delete(p + ":outbox")  # the streams are not the subject here


def rb_visitor(i: int) -> str:
    """redis-benchmark's __rand_int__ is a 12-digit zero-padded number."""
    return f"{i:012d}"


def engine_ratio(args: argparse.Namespace, redis: LocalRedis, out: dict) -> None:
    c = redis.client
    sha = _scripts()["session"].sha
    c.script_load(_scripts()["session"].body)
    load = (args.clients, args.pipeline, args.requests)
    rows = []
    keyspace = args.requests // 5  # ~20% of calls start a session, ~80% reuse one
    for r in range(args.rounds):
        one = redis_benchmark(redis.url, *load, 1, "EVAL", "return 1", "0")
        pool_id = make_pool(c, 2 * keyspace)
        if args.reuse:  # every visitor of the keyspace holds a session: all calls reuse
            preload(c, sha, pool_id, [rb_visitor(i) for i in range(keyspace)])
        c.config_resetstat()
        s = redis_benchmark(redis.url, *load, keyspace, *session_cmd(sha, pool_id))
        stats = commandstats(c)
        c.delete(f"dni:{{{pool_id}}}:outbox")
        rows.append({"return1_rps": one, "session_rps": s, "ratio": s / one,
                     "commandstats": stats})
        print(f"round {r + 1}: EVAL return 1 {one:9.0f}/s   session script {s:9.0f}/s   "
              f"ratio {s / one:.3f}", flush=True)
    out["rounds"] = rows
    out["return1_rps_median"] = statistics.median(x["return1_rps"] for x in rows)
    out["session_rps_median"] = statistics.median(x["session_rps"] for x in rows)
    out["ratio_median"] = statistics.median(x["ratio"] for x in rows)
    st = rows[-1]["commandstats"]
    ev = st.get("evalsha", {"calls": 1, "usec_per_call": 0})
    inner = {k: v for k, v in st.items() if k not in ("evalsha", "eval", "config|resetstat")}
    inner_us = sum(v["calls"] * v["usec_per_call"] for v in inner.values()) / ev["calls"]
    out["where_the_time_goes"] = {
        "evalsha_usec_per_call": ev["usec_per_call"],
        "inner_commands_usec_per_script": round(inner_us, 2),
        "script_overhead_usec_per_call": round(ev["usec_per_call"] - inner_us, 2),
        "inner_commands": {k: {"per_script": round(v["calls"] / ev["calls"], 3),
                               "usec_per_call": v["usec_per_call"]} for k, v in inner.items()},
    }
    print("\nwhere an EVALSHA's time goes (last round, INFO commandstats):")
    w = out["where_the_time_goes"]
    print(f"  EVALSHA {w['evalsha_usec_per_call']:.2f} us = inner commands "
          f"{w['inner_commands_usec_per_script']:.2f} us + script overhead "
          f"{w['script_overhead_usec_per_call']:.2f} us")
    for k, v in sorted(w["inner_commands"].items(), key=lambda kv: -kv[1]["per_script"]
                       * kv[1]["usec_per_call"]):
        print(f"  {k:10s} {v['per_script']:5.2f} per script x {v['usec_per_call']:5.2f} us")
    # AOF propagation: the same load with appendonly off (writes are still executed)
    aof = c.config_get("appendonly")["appendonly"]
    if aof == "yes" and not args.keep_aof:
        c.config_set("appendonly", "no")
        try:
            one = redis_benchmark(redis.url, *load, 1, "EVAL", "return 1", "0")
            pool_id = make_pool(c, 2 * keyspace)
            c.config_resetstat()
            s = redis_benchmark(redis.url, *load, keyspace, *session_cmd(sha, pool_id))
            ev = commandstats(c).get("evalsha", {})
            c.delete(f"dni:{{{pool_id}}}:outbox")
        finally:
            c.config_set("appendonly", "yes")
        out["appendonly_no"] = {"return1_rps": one, "session_rps": s, "ratio": s / one,
                                "evalsha_usec_per_call": ev.get("usec_per_call")}
        print(f"appendonly no: EVAL return 1 {one:9.0f}/s   session script {s:9.0f}/s   "
              f"ratio {s / one:.3f}   EVALSHA {ev.get('usec_per_call')} us")
    if args.investigate:
        investigate(args, redis, sha, out)
    print(f"\nmedian: EVAL return 1 {out['return1_rps_median']:.0f}/s, session script "
          f"{out['session_rps_median']:.0f}/s, ratio {out['ratio_median']:.3f} (target >= 0.7)")


# Variants run only to measure (never loaded by the broker): what costs what in a call.
# The last three are a ladder from the floor of any key-TTL design (read the visitor's
# record, refresh its expiry, or write one) up to what the session script's reuse path
# does; ~20% of their calls create a record, as the session script's start a session.
_FLOOR = ("if v[1] then redis.call('PEXPIRE', KEYS[4], 1800000) return {v[1], v[2]} end "
          "redis.call('HSET', KEYS[4], 's', ARGV[1], 'n', ARGV[2]) "
          "redis.call('PEXPIRE', KEYS[4], 1800000) return {ARGV[1], ARGV[2]}")
_SETTINGS = ("local cfg = redis.call('HMGET', KEYS[1], 'ttl_ms', 'fallback', 'policy') "
             "local t = redis.call('TIME') ")
VARIANTS = {
    "return 1 with the session script's 5 keys and 6 args": "return 1",
    "5 x redis.call('TIME') with the same keys and args":
        "for i = 1, 5 do redis.call('TIME') end return 1",
    "floor: HMGET + PEXPIRE of the visitor record (HSET when new)":
        "local v = redis.call('HMGET', KEYS[4], 's', 'n') " + _FLOOR,
    "floor + the pool's settings (HMGET) and the clock (TIME)":
        _SETTINGS + "local v = redis.call('HMGET', KEYS[4], 's', 'n') " + _FLOOR,
    "floor + settings, clock + the number's lease in the holders hash (HSET)":
        _SETTINGS + "local v = redis.call('HMGET', KEYS[4], 's', 'n') "
        "if v[1] then redis.call('HSET', KEYS[3], ARGV[3], v[1] .. '|' .. ARGV[3] .. '|' "
        ".. t[1] .. '|' .. t[2] .. '|0') end " + _FLOOR,
}


def investigate(args: argparse.Namespace, redis: LocalRedis, sha: str, out: dict) -> None:
    """Same load as above, one variant at a time: usec_per_call and throughput."""
    c = redis.client
    load = (args.clients, args.pipeline, args.requests)
    keyspace = args.requests // 5
    rows = {}
    c.config_resetstat()
    rps = redis_benchmark(redis.url, *load, 1, "EVAL", "return 1", "0")
    rows["EVAL return 1 (no keys or args)"] = {
        "rps": rps, "usec_per_call": commandstats(c)["eval"]["usec_per_call"]}
    for name, body in VARIANTS.items():
        vsha = c.script_load(body)
        pool_id = make_pool(c, 2 * keyspace)
        r = _cost(redis, args, vsha, pool_id, "__rand_int__", keyspace)
        rows[name] = {"rps": r["rps"], "usec_per_call": r["evalsha_usec_per_call"]}
    for label, source in (("session script, short user agent and attribution", SHORT_SOURCE),
                          ("session script, as measured above", SOURCE)):
        pool_id = make_pool(c, 2 * keyspace)
        cmd = session_cmd(sha, pool_id)
        cmd[cmd.index(SOURCE)] = source
        c.config_resetstat()
        rps = redis_benchmark(redis.url, *load, keyspace, *cmd)
        rows[label] = {"rps": rps,
                       "usec_per_call": commandstats(c)["evalsha"]["usec_per_call"]}
        c.delete(f"dni:{{{pool_id}}}:outbox")
    out["variants"] = rows
    print("\nvariants under the same load (measurement only):")
    for name, r in rows.items():
        print(f"  {r['rps']:9.0f}/s  {r['usec_per_call']:6.2f} us/call  {name}")


def _cost(redis: LocalRedis, args: argparse.Namespace, sha: str, pool_id: str,
          visitor: str, keyspace: int) -> dict:
    c = redis.client
    c.config_resetstat()
    rps = redis_benchmark(redis.url, args.clients, args.pipeline, args.requests, keyspace,
                          *session_cmd(sha, pool_id, visitor))
    stats = commandstats(c)
    c.delete(f"dni:{{{pool_id}}}:outbox")
    return {"rps": rps, "evalsha_usec_per_call": stats.get("evalsha", {}).get("usec_per_call"),
            "statuses_hint": {"zrange_calls": stats.get("zrange", {}).get("calls", 0)},
            "inner_usec_per_call": {k: v["usec_per_call"] for k, v in stats.items()
                                    if k not in ("evalsha", "config|resetstat")}}


def scale(args: argparse.Namespace, redis: LocalRedis, out: dict) -> None:
    c = redis.client
    script = _scripts()["session"]
    c.script_load(script.body)
    sha = script.sha
    res: dict = {}

    def show(name: str, a: dict, b: dict) -> None:
        ra = b["evalsha_usec_per_call"] / a["evalsha_usec_per_call"]
        res[name]["cost_ratio"] = round(ra, 3)
        res[name]["throughput_ratio"] = round(b["rps"] / a["rps"], 3)
        print(f"{name}: {a['rps']:8.0f}/s {a['evalsha_usec_per_call']:.2f} us  ->  "
              f"{b['rps']:8.0f}/s {b['evalsha_usec_per_call']:.2f} us   cost x{ra:.3f}  "
              f"(target within 15%)", flush=True)
        za, zb = (x.get("inner_usec_per_call", {}).get("zadd") for x in (a, b))
        if za and zb:
            print(f"    ZADD inside: {za:.2f} us -> {zb:.2f} us")

    # 1. pool size, assign path: session length 0, so every call assigns a number (the
    #    record and the lease end at once), on a 5- and a 100,000-number pool
    for r in range(args.rounds):
        small = make_pool(c, 5, ttl_ms=0)
        big = make_pool(c, args.pool_size, ttl_ms=0)
        a = _cost(redis, args, sha, small, "n__rand_int__", 10**9)
        b = _cost(redis, args, sha, big, "n__rand_int__", 10**9)
        res.setdefault("assign_5_vs_100k_numbers", {"runs": []})["runs"].append([a, b])
    # 2. pool size, reuse path: every number held; calls from the holders
    for r in range(args.rounds):
        small = make_pool(c, 5)
        big = make_pool(c, args.pool_size)
        preload(c, sha, small, [rb_visitor(i) for i in range(5)])
        preload(c, sha, big, [rb_visitor(i) for i in range(args.pool_size)])
        a = _cost(redis, args, sha, small, "__rand_int__", 5)
        b = _cost(redis, args, sha, big, "__rand_int__", args.pool_size)
        res.setdefault("reuse_5_vs_100k_numbers", {"runs": []})["runs"].append([a, b])
    # 3. live sessions, same pool size: 1,000 vs 1,000,000 live sessions in a pool of
    #    live + 200,000 numbers; reuse path (random live visitor) and assign path
    # enough free numbers that every assign-path call of every round gets one
    size = args.live + max(args.spare, args.rounds * args.requests + 10_000)
    for n_live in (1000, args.live):
        c.flushall(asynchronous=True)
        c.script_load(script.body)
        pool_id = make_pool(c, size)
        t = time.monotonic()
        preload(c, sha, pool_id, [rb_visitor(i) for i in range(n_live)])
        print(f"  ({n_live} live sessions loaded in {time.monotonic() - t:.0f} s, "
              f"used_memory {c.info('memory')['used_memory_human']})", flush=True)
        pool_key = f"dni:{{{pool_id}}}:pool"
        ttl_ms = c.hget(pool_key, "ttl_ms")
        for _ in range(args.rounds):
            reuse = _cost(redis, args, sha, pool_id, "__rand_int__", n_live)
            # The assign pass must not add live sessions, or the "1,000 live" rounds would
            # run at 1,000 + requests: its sessions last 1 ms (set for the pass only; the
            # preloaded leases keep their length, so n_live stay live).
            c.hset(pool_key, "ttl_ms", 1)
            try:
                assign = _cost(redis, args, sha, pool_id, "n__rand_int__", 10**9)
            finally:
                c.hset(pool_key, "ttl_ms", ttl_ms)
            live_now = c.zcount(f"dni:{{{pool_id}}}:numbers", f"({int(time.time() * 1000)}",
                                "+inf")
            assert abs(live_now - n_live) <= n_live // 100 + 5, (live_now, n_live)
            res.setdefault("live_sessions", {}).setdefault(n_live, []).append(
                {"reuse": reuse, "assign": assign})
    c.flushall(asynchronous=True)

    def med(runs: list[dict]) -> dict:
        return {"rps": statistics.median(x["rps"] for x in runs),
                "evalsha_usec_per_call": statistics.median(x["evalsha_usec_per_call"]
                                                           for x in runs),
                "inner_usec_per_call": runs[-1]["inner_usec_per_call"],
                "assigned_share": runs[-1]["statuses_hint"]["zrange_calls"] / args.requests}

    print()
    for name in ("assign_5_vs_100k_numbers", "reuse_5_vs_100k_numbers"):
        runs = res[name]["runs"]
        res[name].update(small=med([r[0] for r in runs]), big=med([r[1] for r in runs]))
        show(name, res[name]["small"], res[name]["big"])
    live = res["live_sessions"]
    for path in ("reuse", "assign"):
        name = f"{path}_1k_vs_{args.live // 1000}k_live_sessions"
        res[name] = {}
        a, b = (med([x[path] for x in live[n]]) for n in (1000, args.live))
        res[name].update(small=a, big=b)
        show(name, a, b)
    out.update(res)


def memory(args: argparse.Namespace, redis: LocalRedis, out: dict) -> None:
    c = redis.client
    script = _scripts()["session"]
    c.script_load(script.body)
    n = args.sessions
    if args.hash_max_listpack_value:
        c.config_set("hash-max-listpack-value", args.hash_max_listpack_value)
    out["hash_max_listpack_value"] = c.config_get("hash-max-listpack-value")[
        "hash-max-listpack-value"]
    pool_id = make_pool(c, n)

    def used() -> int:
        time.sleep(0.5)
        m = c.info("memory")
        return (m["used_memory"] - m.get("mem_aof_buffer", 0) - m.get("mem_clients_normal", 0)
                - m.get("mem_clients_slaves", 0))

    before = used()
    # ids shaped as in production: the snippet's visitor ids (base-36 time, ".", two
    # random 32-bit integers) and the broker's 16-character session ids
    rng = random.Random(1)
    t36 = _base36(int(time.time() * 1000))
    visitors = [f"{t36}.{rng.getrandbits(32)}{rng.getrandbits(32)}" for _ in range(n)]
    p = f"dni:{{{pool_id}}}"
    for i in range(0, n, 5000):
        pipe = c.pipeline(transaction=False)
        for v in visitors[i:i + 5000]:
            sid = base64.urlsafe_b64encode(rng.randbytes(12)).decode()
            pipe.evalsha(script.sha, 5, p + ":pool", p + ":numbers", p + ":holders",
                         p + ":v:" + v, p + ":outbox", sid, i, v, pool_id, SOURCE)
        pipe.execute()
    with_stream = used()
    stream_bytes = c.memory_usage(p + ":outbox", samples=0)
    c.delete(p + ":outbox")
    after = used()
    live = c.zcount(p + ":numbers", f"({int(time.time() * 1000)}", "+inf")
    attribution = len(SOURCE)  # the holders' a:N value: ip, user agent, attribution JSON
    per = (after - before) / n
    sample = c.memory_usage(p + ":v:" + visitors[0], samples=0)
    out.update({
        "sessions": n, "live_sessions": live,
        "visitor_id_example": visitors[0], "visitor_id_mean_len":
            round(sum(map(len, visitors)) / n, 1), "used_memory_before": before,
        "used_memory_after": after, "outbox_stream_bytes": stream_bytes,
        "used_memory_with_stream": with_stream,
        "bytes_per_session": round(per, 1),
        "attribution_value_bytes": attribution,
        "bytes_per_session_less_attribution": round(per - attribution, 1),
        "memory_usage_one_visitor_record": sample,
        "holders_hash_bytes_per_entry": round(c.memory_usage(p + ":holders", samples=0) / n, 1),
        "visitor_record_encoding": c.object("encoding", p + ":v:" + visitors[0]).decode(),
    })
    print(f"{n} sessions: {per:.0f} bytes each outside the outbox stream, {attribution} of "
          f"them attribution values (ip, user agent, JSON): {per - attribution:.0f} bytes per session "
          f"(target <= 250)\n  one visitor record (MEMORY USAGE): {sample} bytes; holders "
          f"hash: {out['holders_hash_bytes_per_entry']} bytes per entry; outbox stream: "
          f"{stream_bytes / n:.0f} bytes per entry (excluded)")


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="dni bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", choices=["engine-ratio", "scale", "memory"])
    ap.add_argument("--redis-url")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=100_000)
    ap.add_argument("--live", type=int, default=1_000_000)
    ap.add_argument("--spare", type=int, default=200_000,
                    help="scale: free numbers beside the live sessions' (assign path)")
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                    help="CONFIG SET this on the Redis first (repeatable)")
    ap.add_argument("--hash-max-listpack-value", type=int, default=None,
                    help="memory: set this Redis option first (default: leave Redis's)")
    ap.add_argument("--keep-aof", action="store_true", help="skip the appendonly-no run")
    ap.add_argument("--reuse", action="store_true",
                    help="engine-ratio: give every visitor a session first, so every call "
                    "takes the reuse path (the default mix has ~20%% new sessions)")
    ap.add_argument("--investigate", action="store_true",
                    help="engine-ratio: also time variants (args only, redis.call overhead, "
                    "argument sizes)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    out: dict = {"target": args.target, "params": vars(args)}
    with LocalRedis(args.redis_url) as redis:
        for item in args.config:
            name, _, value = item.partition("=")
            redis.client.config_set(name, value)
        {"engine-ratio": engine_ratio, "scale": scale, "memory": memory}[args.target](
            args, redis, out)
        out["meta"] = metadata(redis.url)
        out["meta"]["load_average"] = os.getloadavg()
    if args.json_path:
        dump(out, args.json_path)
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
