"""Edge target: POST /v1/dni/session vs constant-body endpoints of the same server.

Two baselines, both served by the same `dni serve` (same worker count):
  - `/bench/constant`: a bare Starlette endpoint returning a constant orjson body, the
    baseline issue 2 names (mounted with DNI_BENCH_ROUTES=1);
  - `/healthz`: a constant body through the same lean ASGI path as the edge endpoints,
    the stricter baseline.
Runs all three with wrk, side by side in one run, alternating rounds so drift on a
shared machine hits each alike. Each session round
gets a fresh pool large enough that every new visitor gets a number (no fallback
shortcut). The visitor mix: a share of requests from new visitors, the rest from
visitors already seen in the round (returning page views).

    python -m bench.edge_ratio [--rounds 3] [--duration 8] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics

from .common import HERE, Broker, cpu_seconds, dump, metadata, run_wrk

WRK_SCRIPT = str(HERE / "wrk_session.lua")


def cpu_per_request(broker: Broker, run: dict, before: dict[str, float]) -> dict[str, float]:
    """Microseconds of CPU per answered request during `run`, by process: the broker's
    Python processes, its embedded redis-server (absent with --redis-url), and wrk."""
    used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(broker.proc.pid).items()}
    redis = sum(v for k, v in used.items() if k.startswith("redis"))
    n = max(run["requests"], 1)
    return {"broker": round((sum(used.values()) - redis) / n * 1e6, 1),
            "redis": round(redis / n * 1e6, 1), "wrk": round(run["wrk_cpu_s"] / n * 1e6, 1)}


def _cpu(run: dict) -> str:
    return " / ".join(f"{x:.1f}" for x in run["cpu_us_per_request"].values())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--new-share", type=float, default=0.25)
    ap.add_argument("--pool-size", type=int, default=100_000)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)

    const, bare, session, outcomes = [], [], [], []
    with Broker(args.workers, args.redis_url) as broker:
        run_wrk(broker.url + "/healthz", 2, args.connections)  # warm-up
        for i in range(args.rounds):
            before = cpu_seconds(broker.proc.pid)
            b = run_wrk(broker.url + "/bench/constant", args.duration, args.connections)
            b["cpu_us_per_request"] = cpu_per_request(broker, b, before)
            before = cpu_seconds(broker.proc.pid)
            c = run_wrk(broker.url + "/healthz", args.duration, args.connections)
            c["cpu_us_per_request"] = cpu_per_request(broker, c, before)
            pool_id = broker.create_pool(args.pool_size)
            before = cpu_seconds(broker.proc.pid)
            s = run_wrk(broker.url + "/v1/dni/session", args.duration, args.connections,
                        script=WRK_SCRIPT,
                        env={"DNI_POOL": pool_id, "DNI_NEW_SHARE": str(args.new_share)})
            s["cpu_us_per_request"] = cpu_per_request(broker, s, before)
            st = broker.stats(pool_id)
            assert not (s["non_2xx"] or b["non_2xx"] or c["non_2xx"]), (b, c, s)
            const.append(c["rps"])
            bare.append(b["rps"])
            session.append(s["rps"])
            outcomes.append({"bare_starlette_constant": b, "healthz": c, "session": s,
                             "live_sessions": st["active_sessions"], "pool_size": st["numbers"]})
            print(f"round {i + 1}: bare-starlette constant {b['rps']:7.0f}  healthz {c['rps']:7.0f}"
                  f"  session {s['rps']:7.0f} req/s   ratios {s['rps'] / b['rps']:.3f} /"
                  f" {s['rps'] / c['rps']:.3f}   (new visitors: {st['active_sessions']} of"
                  f" {s['requests']} requests)", flush=True)
            print(f"         CPU us per request (broker / redis / wrk): bare-starlette "
                  f"{_cpu(b)}   healthz {_cpu(c)}   session {_cpu(s)}", flush=True)
        meta = metadata(broker.redis_url)
    result = {
        "target": "POST /v1/dni/session >= 0.6x a constant-body endpoint of the same server",
        "params": vars(args),
        "bare_constant_rps_median": statistics.median(bare),
        "healthz_rps_median": statistics.median(const),
        "session_rps_median": statistics.median(session),
        "ratio_vs_bare_starlette": statistics.median(s / b for s, b in zip(session, bare)),
        "ratio_vs_healthz": statistics.median(s / c for s, c in zip(session, const)),
        "cpu_us_per_request_median": {
            name: {who: statistics.median(o[name]["cpu_us_per_request"][who] for o in outcomes)
                   for who in ("broker", "redis", "wrk")}
            for name in ("bare_starlette_constant", "healthz", "session")},
        "rounds": outcomes,
        "meta": meta,
    }
    print(f"\nmedian req/s: bare-starlette constant {result['bare_constant_rps_median']:.0f},"
          f" healthz {result['healthz_rps_median']:.0f}, session {result['session_rps_median']:.0f}"
          f"\nratio vs bare Starlette constant: {result['ratio_vs_bare_starlette']:.3f}"
          f"   ratio vs lean healthz: {result['ratio_vs_healthz']:.3f}   (target >= 0.6)")
    if args.json_path:
        dump(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
