"""The `dni` command: `dni serve` runs the HTTP API (on an embedded Redis if need be)."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys

from . import __version__, events
from .settings import Settings, SettingsError, positive_int


def _settings() -> Settings | None:
    """The settings, or None after a one-line message naming the bad variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"dni: {exc}", file=sys.stderr)
        return None


def _port(raw: str) -> int:
    """A TCP port (argparse type; also applied to the DNI_PORT default)."""
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port (1-65535; DNI_PORT?)")
    return port


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .embedded import EmbeddedError, EmbeddedRedis, RedisNotInstalled
    from .http import HttpProtocol

    settings = _settings()
    if settings is None:
        return 2
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        try:
            os.environ["DNI_REDIS_URL"] = embedded.start()
        except (RedisNotInstalled, EmbeddedError) as exc:
            print(f"dni: {exc}", file=sys.stderr)
            return 1
        print(f"dni: embedded Redis at {embedded.url} (data in {embedded.data_dir})",
              file=sys.stderr)
    if not settings.admin_token:
        os.environ["DNI_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
        print(f"dni: DNI_ADMIN_TOKEN not set; admin token for this run: "
              f"{os.environ['DNI_ADMIN_TOKEN']}", file=sys.stderr)
    # Stop cleanly (and so stop the embedded Redis) on SIGTERM as on Ctrl-C; a closed
    # terminal (SIGHUP) is a SIGTERM, which uvicorn turns into its orderly shutdown.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    if args.workers > 1:
        # the workers stop when this process goes, even when it is killed (app.py), and a
        # closed terminal stops the broker as with one worker: uvicorn's supervisor would
        # restart the workers on SIGHUP
        os.environ["DNI_SUPERVISOR_PID"] = str(os.getpid())
        from uvicorn.supervisors import Multiprocess

        if hasattr(Multiprocess, "handle_hup"):  # uvicorn >= 0.30
            Multiprocess.handle_hup = Multiprocess.handle_term  # type: ignore[method-assign]
    try:
        uvicorn.run("broker.app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level, access_log=False,
                    server_header=False, http=HttpProtocol or "auto",
                    # no WebSocket routes: an upgrade request is plain HTTP (uvicorn's
                    # WebSocket layer would refuse it with an empty 403)
                    ws="none",
                    # X-Forwarded-For is honoured only from these addresses.
                    proxy_headers=bool(settings.trusted_proxies),
                    forwarded_allow_ips=settings.trusted_proxies or None)
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _sidecar(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .embedded import side_redis_url
    from .keys import Keys
    from .redisconn import connect
    from .scripts import load_scripts
    from .sidecar import Sidecar

    settings = _settings()
    if settings is None:
        return 2
    url = side_redis_url(settings.redis_url, settings.data_dir)
    if not url:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        redis = connect(url, settings.redis_cluster, settings.redis_retry_s,
                        settings.redis_cluster_nodes)
        sidecar = Sidecar(redis, Keys(settings.key_prefix), load_scripts(),
                          settings.stream_maxlen, settings.sidecar_interval_ms / 1000)
        try:
            if args.once:
                if not await sidecar.lead():
                    print("dni: another sidecar leads: it does the passes", file=sys.stderr)
                    return
                try:
                    print(await sidecar.cycle())
                finally:  # the running sidecars need not wait for the lease to run out
                    await sidecar.release()
            else:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, sidecar.stop)
                loop.add_signal_handler(signal.SIGINT, sidecar.stop)
                await sidecar.run()
        finally:
            await redis.close()

    from .redisconn import RedisUnavailable

    try:
        asyncio.run(run())
    except (RedisUnavailable, OSError) as exc:
        print(f"dni: {exc}", file=sys.stderr)  # names the Redis it could not reach
        return 2
    return 0


def _bench(argv: list[str]) -> int:
    """`dni bench`: bench/ beside a source tree's broker/, else the wheel's dni_bench."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "bench" / "cli.py").is_file():
        sys.path.insert(0, str(root))
        from bench.cli import main as bench_main
    else:
        from dni_bench.cli import main as bench_main
    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options are parsed in bench/
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="dni", description="DNI session broker")
    parser.add_argument("--version", action="version", version=f"dni-broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the edge and admin HTTP API")
    serve.add_argument("--host", default=os.environ.get("DNI_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=_port, default=os.environ.get("DNI_PORT", "8000"),
                       help="default DNI_PORT or 8000")
    serve.add_argument("--workers", type=positive_int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)
    sidecar = sub.add_parser("sidecar", help="move session records to dni:sessions")
    sidecar.add_argument("--once", action="store_true", help="one pass over every pool")
    sidecar.set_defaults(func=_sidecar)
    events.add_parser(sub)
    from . import cli_admin
    cli_admin.register(sub)  # dni pools ..., dni numbers ...
    sub.add_parser("bench", help="load-test a broker: dni bench --help", add_help=False)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
