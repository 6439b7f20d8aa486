"""`dni bench SCENARIO [options]`: load-test a broker, or its Lua engine, and record it.

Scenarios:
  edge        open-loop HTTP load on POST /v1/dni/session and heartbeats (the visitor
              model); without --rate: the highest throughput, then open loop at
              --load-fraction of it; --ramp: rising rates until p99 > --p99-ms
  engine      the same visitor model straight against the Lua scripts (no HTTP)
  pressure    arrivals against a pool of a given size and session length: fallback rate
              and utilization over time
  naive       a non-atomic read-choose-write baseline vs the Lua engine, same contention:
              double assignments and throughput
  wrk-check   this generator vs wrk on the same endpoint (is the generator the bottleneck?)
  edge-ratio  the edge target: session vs constant endpoints with wrk (bench/edge_ratio.py)
  engine-ratio, scale, memory   the Redis-side targets (bench/redis_targets.py)

Without --url / --redis-url a broker (and its embedded Redis) is started for the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

try:
    from . import loadgen
    from .common import dump, metadata
    _MISSING = None
except ImportError as exc:  # an installed wheel without the extra: help still works
    _MISSING = exc.name


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load")
    g.add_argument("--rate", type=float, default=None,
                   help="requests/s, open loop (default: find the peak, then a fraction)")
    g.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    g.add_argument("--procs", type=int, default=1,
                   help="generator processes (on 2 cores shared with the broker and Redis, "
                   "a second process steals the server's CPU: see wrk-check)")
    g.add_argument("--connections", type=int, default=64, help="HTTP connections / in-flight "
                   "Redis calls, over all processes")
    g.add_argument("--load-fraction", type=float, default=0.5)
    g.add_argument("--ramp", action="store_true")
    g.add_argument("--p99-ms", type=float, default=5.0)
    g.add_argument("--rounds", type=int, default=1)
    g.add_argument("--warmup", type=float, default=None,
                   help="open-loop runs: seconds of load before measuring (default: one mean "
                   "visit, visit_s / speed), so that visits in progress have their sessions")
    m = p.add_argument_group("visitor model")
    m.add_argument("--new-share", type=float, default=0.3, help="share of visits by new visitors")
    m.add_argument("--pages", type=float, default=3.0, help="mean page views per visit")
    m.add_argument("--visit-s", type=float, default=120.0, help="mean visit length (s)")
    m.add_argument("--heartbeat-s", type=float, default=60.0, help="0: no heartbeats")
    m.add_argument("--speed", type=float, default=10.0,
                   help="time compression: visits, heartbeats and the pool's session length "
                   "run this many times faster (default 10: a 120 s visit takes 12 s)")
    t = p.add_argument_group("target")
    t.add_argument("--url", help="a running broker (default: start one)")
    t.add_argument("--token", help="its admin token (to create the bench pool)")
    t.add_argument("--pool", help="use this existing pool")
    t.add_argument("--redis-url", help="Redis (default: an embedded redis-server)")
    t.add_argument("--workers", type=int, default=1, help="broker workers when starting one")
    t.add_argument("--pool-size", type=int, default=100_000)
    t.add_argument("--session-s", type=float, default=1800.0, help="pool session length (s, before compression)")
    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_path", help="write the full record to this file")
    o.add_argument("--quiet", action="store_true", help="no live progress line")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dni bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="scenario", required=True)
    from .scenarios import SCENARIOS

    for name, fn in SCENARIOS.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").split("\n")[0])
        _common(p)
        p.set_defaults(run=fn)
    sub.add_parser("edge-ratio", help="the edge target (wrk), see bench/edge_ratio.py",
                   add_help=False)
    for name in ("engine-ratio", "scale", "memory"):
        sub.add_parser(name, help="a Redis-side target, see bench/redis_targets.py",
                       add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _MISSING:
        need = f"dni bench: {_MISSING} is missing: pip install 'dni-broker[bench]'"
        if not argv or {"-h", "--help"} & set(argv):
            print(f"{__doc__}\n{need}")
            return 0
        raise SystemExit(need)
    if argv[:1] == ["edge-ratio"]:
        from . import edge_ratio

        edge_ratio.main(argv[1:])
        return 0
    if argv[:1] and argv[0] in ("engine-ratio", "scale", "memory"):
        from . import redis_targets

        redis_targets.main(argv)
        return 0
    args = parser().parse_args(argv)
    if args.warmup is None:
        args.warmup = args.visit_s / args.speed
    if args.scenario == "naive" and args.pool_size == 100_000:
        args.pool_size = 1000  # small and contended, unless told otherwise
        if args.session_s == 1800.0:
            args.session_s = 0.2
    if args.scenario == "pressure" and args.pool_size == 100_000:
        args.pool_size = 100
    out: dict = {"scenario": args.scenario,
                 "params": {k: v for k, v in vars(args).items() if k != "run"}}
    started = time.time()
    with ExitStack() as ctx:
        runs = args.run(args, ctx, out)
        out["meta"] = metadata(out.get("redis_url"))
    out["runs"] = [{"name": n, **r} for n, r in runs]
    out["wall_s"] = round(time.time() - started, 1)
    print(loadgen.table(runs))
    for name, r in runs:
        for line in loadgen.warnings(r):
            print(f"warning ({name}): {line}")
    for key in ("naive", "wrk_check", "pressure"):
        if key in out:
            extra = dict(out[key])
            extra.pop("utilization_over_time", None)
            print(f"{key}: {extra}")
    if args.json_path:
        dump(out, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
