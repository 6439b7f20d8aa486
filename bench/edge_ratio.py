"""Edge target: POST /v1/dni/session vs the server's constant-body endpoint (/healthz).

Runs both with wrk, side by side in one run against one `dni serve` (same worker count),
alternating A/B rounds so drift on a shared machine hits both alike. Each session round
gets a fresh pool large enough that every new visitor gets a number (no fallback
shortcut). The visitor mix: a share of requests from new visitors, the rest from
visitors already seen in the round (returning page views).

    python -m bench.edge_ratio [--rounds 3] [--duration 8] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics

from .common import ROOT, Broker, dump, metadata, run_wrk

WRK_SCRIPT = str(ROOT / "bench" / "wrk_session.lua")


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

    const, session, outcomes = [], [], []
    with Broker(args.workers, args.redis_url) as broker:
        run_wrk(broker.url + "/healthz", 2, args.connections)  # warm-up
        for i in range(args.rounds):
            c = run_wrk(broker.url + "/healthz", args.duration, args.connections)
            pool_id = broker.create_pool(args.pool_size, start=i * args.pool_size)
            s = run_wrk(broker.url + "/v1/dni/session", args.duration, args.connections,
                        script=WRK_SCRIPT,
                        env={"DNI_POOL": pool_id, "DNI_NEW_SHARE": str(args.new_share)})
            st = broker.stats(pool_id)
            const.append(c["rps"])
            session.append(s["rps"])
            outcomes.append({"constant": c, "session": s, "live_sessions": st["active_sessions"],
                             "pool_size": st["numbers"]})
            print(f"round {i + 1}: constant {c['rps']:9.0f} req/s   session {s['rps']:9.0f} req/s"
                  f"   ratio {s['rps'] / c['rps']:.3f}   (non-2xx {s['non_2xx']},"
                  f" live sessions {st['active_sessions']} of {st['numbers']})", flush=True)
        meta = metadata(broker.redis_url)
    ratios = [s / c for s, c in zip(session, const)]
    result = {
        "target": "POST /v1/dni/session >= 0.6x constant-body endpoint",
        "params": vars(args),
        "constant_rps_median": statistics.median(const),
        "session_rps_median": statistics.median(session),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "rounds": outcomes,
        "meta": meta,
    }
    print(f"\nmedian: constant {result['constant_rps_median']:.0f} req/s, session "
          f"{result['session_rps_median']:.0f} req/s, ratio {result['ratio_median']:.3f} "
          f"(target >= 0.6)")
    if args.json_path:
        dump(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
