"""One settings object, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}\Z")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message says which and why."""


def positive_int(raw: str) -> int:
    """A whole number >= 1 (an argparse type of the CLI's options)."""
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number >= 1")
    return n


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def _nodes(env: dict[str, str], url: str | None, cluster: bool) -> tuple[tuple[str, int], ...]:
    """DNI_REDIS_CLUSTER_NODES: more nodes to discover the cluster from, beside the one of
    DNI_REDIS_URL (whose scheme, user and password they share): `host:port,host:port`."""
    raw = env.get("DNI_REDIS_CLUSTER_NODES", "").strip()
    if not raw:
        return ()
    name = "DNI_REDIS_CLUSTER_NODES"
    if not cluster:
        raise SettingsError(f"{name} names nodes of a Redis Cluster: set DNI_REDIS_CLUSTER=1")
    if not url or not url.startswith(("redis://", "rediss://")):
        raise SettingsError(f"{name} needs DNI_REDIS_URL=redis:// or rediss:// (its scheme, "
                            f"user and password apply to every node)")
    nodes = []
    for entry in raw.split(","):
        host, _, port = entry.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:7000
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{name}: {entry.strip()!r} is not host:port")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _choice(env: dict[str, str], name: str, options: tuple[str, ...]) -> str:
    raw = env.get(name) or options[0]
    if raw not in options:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(options)}")
    return raw


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_cluster_nodes: tuple[tuple[str, int], ...] = ()  # beside DNI_REDIS_URL's node
    admin_token: str | None = None
    data_dir: str = "./.dni"
    key_prefix: str = "dni"
    default_region: str = "US"
    max_body_bytes: int = 16384
    max_admin_body_bytes: int = 1 << 20
    heartbeat_s: int = 60
    default_session_ttl_s: int = 1800
    redis_retry_s: float = 3.0
    trusted_proxies: str = ""
    rate_limit_per_min: int = 0
    new_sessions_per_ip: int = 0
    bench_routes: bool = False
    ip_mode: str = "full"
    ip_hash_key: str = ""
    public_url: str | None = None
    call_grace_s: int = 1800
    sidecar: bool = True
    sidecar_interval_ms: int = 500
    stream_maxlen: int = 1_000_000
    max_deliveries: int = 5
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    stats_flush_ms: int = 1000

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        prefix = env.get("DNI_KEY_PREFIX", "dni")
        if not _PREFIX_RE.match(prefix):
            raise SettingsError(
                f"DNI_KEY_PREFIX={prefix!r} must be 1-32 of A-Z a-z 0-9 _ . : - (no braces)"
            )
        url = env.get("DNI_REDIS_URL") or None
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"DNI_REDIS_URL={url!r} must start with redis://, rediss:// or unix://"
            )
        if url:
            from .redisconn import parse_redis_url

            try:
                parse_redis_url(url)
            except ValueError as exc:
                raise SettingsError(f"DNI_REDIS_URL={url!r}: {exc}") from None
        cluster = _flag(env, "DNI_REDIS_CLUSTER")
        cluster_nodes = _nodes(env, url, cluster)
        if env.get("DNI_IP_MODE") == "hash" and not env.get("DNI_IP_HASH_KEY"):
            raise SettingsError("DNI_IP_MODE=hash needs a secret in DNI_IP_HASH_KEY")
        region = env.get("DNI_DEFAULT_REGION", "US").upper()
        if not re.match(r"^[A-Z]{2}\Z", region):
            raise SettingsError(f"DNI_DEFAULT_REGION={region!r} is not a two-letter region")
        return cls(
            redis_url=url,
            redis_cluster=cluster,
            redis_cluster_nodes=cluster_nodes,
            admin_token=env.get("DNI_ADMIN_TOKEN") or None,
            data_dir=env.get("DNI_DATA_DIR") or "./.dni",
            key_prefix=prefix,
            default_region=region,
            max_body_bytes=_int(env, "DNI_MAX_BODY_BYTES", 16384, 1024, 1 << 20),
            heartbeat_s=_int(env, "DNI_HEARTBEAT_S", 60, 5, 3600),
            default_session_ttl_s=_int(env, "DNI_SESSION_TTL_S", 1800, 1, 86400),
            trusted_proxies=env.get("DNI_TRUSTED_PROXIES", "").strip(),
            rate_limit_per_min=_int(env, "DNI_RATE_LIMIT", 0, 0, 1_000_000),
            new_sessions_per_ip=_int(env, "DNI_MAX_NEW_SESSIONS_PER_IP", 0, 0, 1_000_000),
            bench_routes=_flag(env, "DNI_BENCH_ROUTES"),
            ip_mode=_choice(env, "DNI_IP_MODE", ("full", "truncate", "hash")),
            ip_hash_key=env.get("DNI_IP_HASH_KEY", ""),
            public_url=(env.get("DNI_PUBLIC_URL") or "").rstrip("/") or None,
            call_grace_s=_int(env, "DNI_CALL_GRACE_S", 1800, 0, 86400),
            sidecar=not env.get("DNI_SIDECAR") or _flag(env, "DNI_SIDECAR"),
            sidecar_interval_ms=_int(env, "DNI_SIDECAR_INTERVAL_MS", 500, 50, 60000),
            stream_maxlen=_int(env, "DNI_STREAM_MAXLEN", 1_000_000, 1000, 1 << 40),
            max_deliveries=_int(env, "DNI_MAX_DELIVERIES", 5, 1, 1000),
            redis_retry_s=_int(env, "DNI_REDIS_RETRY_MS", 3000, 0, 60000) / 1000,
            twilio_account_sid=env.get("DNI_TWILIO_ACCOUNT_SID") or None,
            twilio_auth_token=env.get("DNI_TWILIO_AUTH_TOKEN") or None,
            twilio_api_url=env.get("DNI_TWILIO_API_URL") or "https://api.twilio.com",
            stats_flush_ms=_int(env, "DNI_STATS_FLUSH_MS", 1000, 50, 60000),
        )
