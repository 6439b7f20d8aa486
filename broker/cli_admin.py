"""`dni pools ...` and `dni numbers ...`: the admin API from the command line.

They talk to a running broker: `--url` (or `DNI_URL`, default http://127.0.0.1:8000) and
`--token` (or `DNI_ADMIN_TOKEN`). Output is JSON, except `dni pools list` and
`dni pools stats`, which print a table unless given `--json`. An API error prints its
code and message on stderr and exits 1; a broker that cannot be reached exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


TIMEOUT_S = 300  # GET /v1/stats reads every pool's day of counts (about 4 ms a pool)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    if not args.token:
        raise CliError("no admin token: pass --token or set DNI_ADMIN_TOKEN", 2)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {args.token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as res:
            raw = res.read()
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            raise CliError(f"{err['code']}: {err['message']}") from None
        except (ValueError, KeyError, TypeError):
            raise CliError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise CliError(f"the broker at {args.url} did not answer within {TIMEOUT_S} s "
                           f"({method} {path}); it may still be working on it", 2) from None
        raise CliError(f"cannot reach the broker at {args.url}: {exc}", 2) from None
    return json.loads(raw) if raw else None


def _q(number: str) -> str:
    return urllib.parse.quote(number, safe="")


def _pid(pool_id: str) -> str:
    """A pool id as given, if it is one (a path or query in it would address another
    route: `P/numbers/N` is not a pool)."""
    from .models import POOL_ID_RE

    if not POOL_ID_RE.match(pool_id):
        raise CliError(f"{pool_id!r} is not a pool id (1-64 of A-Z a-z 0-9 _ -)", 2)
    return pool_id


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _table(rows: list[list[Any]], head: list[str]) -> None:
    cells = [head] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _buy(args: argparse.Namespace) -> dict[str, Any] | None:
    if not getattr(args, "buy", None):
        return None
    buy: dict[str, Any] = {"provider": args.provider, "count": args.buy}
    if args.area_code:
        buy["area_code"] = args.area_code
    if args.contains:
        buy["contains"] = args.contains
    return buy


def _pool_fields(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("name", "website_url", "target_number", "call_flow", "session_ttl_s",
                 "fallback_number", "policy"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value == "" else value
    return body


def pools_create(args: argparse.Namespace) -> None:
    body = _pool_fields(args)
    body["numbers"] = args.numbers or []
    if (buy := _buy(args)) is not None:
        body["buy"] = buy
    _print(_call(args, "POST", "/v1/pools", body))


def pools_list(args: argparse.Namespace) -> None:
    pools = _call(args, "GET", "/v1/pools")["pools"]
    if args.json:
        return _print(pools)
    _table([[p["id"], p["name"], len(p["numbers"]), len(p.get("inactive_numbers", [])),
             p["session_ttl_s"], p["policy"], p["fallback_number"] or "-"] for p in pools],
           ["ID", "NAME", "NUMBERS", "INACTIVE", "SESSION_S", "POLICY", "BACKUP"])


def pools_show(args: argparse.Namespace) -> None:
    _print(_call(args, "GET", f"/v1/pools/{_pid(args.pool)}"))


def pools_update(args: argparse.Namespace) -> None:
    _print(_call(args, "PATCH", f"/v1/pools/{_pid(args.pool)}", _pool_fields(args)))


def pools_delete(args: argparse.Namespace) -> None:
    _call(args, "DELETE", f"/v1/pools/{_pid(args.pool)}")
    print(f"deleted pool {_pid(args.pool)}")


def pools_stats(args: argparse.Namespace) -> None:
    query = f"?target={args.target}"
    if args.pool:
        pools = [_call(args, "GET", f"/v1/pools/{_pid(args.pool)}/stats{query}")]
    else:
        pools = _call(args, "GET", f"/v1/stats{query}")["pools"]
    if args.json:
        return _print(pools if not args.pool else pools[0])
    rows = []
    for p in pools:
        hour = p["counts"]["last_hour"]
        rows.append([p["pool_id"], p["numbers"], p["active_sessions"],
                     f"{p['utilization'] * 100:.0f}%", hour["new"], hour["reused"],
                     hour["fallback"], hour["unavailable"], p["peak_concurrent"]["last_hour"],
                     p["sizing"]["recommended_size"], "YES" if p["pressure"] else "-"])
    _table(rows, ["POOL", "NUMBERS", "ACTIVE", "UTIL", "NEW/H", "REUSED/H", "FALLBACK/H",
                  "UNAVAIL/H", "PEAK/H", "RECOMMENDED", "PRESSURE"])


def numbers_add(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"numbers": args.numbers}
    if args.call_flow:
        body["call_flow"] = args.call_flow
    _print(_call(args, "POST", f"/v1/pools/{_pid(args.pool)}/numbers", body))


def numbers_buy(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"buy": _buy(args)}
    if args.call_flow:
        body["call_flow"] = args.call_flow
    _print(_call(args, "POST", f"/v1/pools/{_pid(args.pool)}/numbers", body))


def numbers_remove(args: argparse.Namespace) -> None:
    for number in args.numbers:
        _call(args, "DELETE", f"/v1/pools/{_pid(args.pool)}/numbers/{_q(number)}")
        print(f"removed {number}")


def numbers_set(args: argparse.Namespace) -> None:
    action = "activate" if args.action == "activate" else "deactivate"
    for number in args.numbers:
        _print(_call(args, "POST", f"/v1/pools/{_pid(args.pool)}/numbers/{_q(number)}/{action}"))


def _pool_options(p: argparse.ArgumentParser, create: bool) -> None:
    p.add_argument("--name", required=create)
    p.add_argument("--website-url", dest="website_url")
    p.add_argument("--target-number", dest="target_number", help="'' clears it")
    p.add_argument("--call-flow", dest="call_flow")
    p.add_argument("--session-ttl", dest="session_ttl_s", type=int, help="seconds, 1..86400")
    p.add_argument("--fallback-number", "--backup-number", dest="fallback_number",
                   help="'' clears it")
    p.add_argument("--policy", choices=["random", "lru"])


def _buy_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--buy" if not required else "--count", dest="buy", type=int,
                   required=required, metavar="N", help="buy N numbers")
    p.add_argument("--provider", default="sandbox", help="sandbox (default) or twilio")
    p.add_argument("--area-code", dest="area_code")
    p.add_argument("--contains", help="digits the numbers must contain")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `pools` and `numbers` to the `dni` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DNI_URL", "http://127.0.0.1:8000"),
                        help="the broker (env DNI_URL)")
    common.add_argument("--token", default=os.environ.get("DNI_ADMIN_TOKEN"),
                        help="admin token (env DNI_ADMIN_TOKEN)")

    pools = sub.add_parser("pools", help="create, list, show, update, delete pools; stats")
    ps = pools.add_subparsers(dest="pools_command", required=True)
    p = ps.add_parser("create", parents=[common], help="create a pool")
    _pool_options(p, create=True)
    p.add_argument("numbers", nargs="*", help="existing numbers to add")
    _buy_options(p, required=False)
    p.set_defaults(func=_cmd(pools_create))
    p = ps.add_parser("list", parents=[common], help="all pools (a table, or --json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd(pools_list))
    for name, func, helptext in (("show", pools_show, "one pool"),
                                 ("delete", pools_delete, "delete a pool (ends its sessions)")):
        p = ps.add_parser(name, parents=[common], help=helptext)
        p.add_argument("pool")
        p.set_defaults(func=_cmd(func))
    p = ps.add_parser("update", parents=[common], help="change a pool's fields")
    p.add_argument("pool")
    _pool_options(p, create=False)
    p.set_defaults(func=_cmd(pools_update))
    p = ps.add_parser("stats", parents=[common], help="stats and sizing (a table, or --json)")
    p.add_argument("pool", nargs="?", help="one pool (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--target", type=float, default=0.01, help="fallback target (0.01)")
    p.set_defaults(func=_cmd(pools_stats))

    nums = sub.add_parser("numbers", help="add, remove, buy, activate, deactivate numbers")
    ns = nums.add_subparsers(dest="numbers_command", required=True)
    p = ns.add_parser("add", parents=[common], help="add existing numbers to a pool")
    p.add_argument("pool")
    p.add_argument("numbers", nargs="+")
    p.add_argument("--call-flow", dest="call_flow")
    p.set_defaults(func=_cmd(numbers_add))
    p = ns.add_parser("buy", parents=[common], help="buy numbers into a pool")
    p.add_argument("pool")
    _buy_options(p, required=True)
    p.add_argument("--call-flow", dest="call_flow")
    p.set_defaults(func=_cmd(numbers_buy))
    p = ns.add_parser("remove", parents=[common], help="remove numbers (their sessions end)")
    p.add_argument("pool")
    p.add_argument("numbers", nargs="+")
    p.set_defaults(func=_cmd(numbers_remove))
    for action in ("activate", "deactivate"):
        p = ns.add_parser(action, parents=[common], help=f"{action} numbers")
        p.add_argument("pool")
        p.add_argument("numbers", nargs="+")
        p.set_defaults(func=_cmd(numbers_set), action=action)


def _cmd(func: Any) -> Any:
    """The command as `dni` runs it: exit status 0, or 1/2 with a one-line message."""

    def run(args: argparse.Namespace) -> int:
        try:
            func(args)
        except CliError as exc:
            print(f"dni: {exc}", file=sys.stderr)
            return exc.code
        return 0

    return run
