"""A session's source: the page's attribution plus the visitor's IP and user agent.

Stored per number in the pool's holders hash as one string, b"ip\\nuser_agent\\nJSON"
(neither an IP nor a header value can hold a newline; msgspec escapes them in JSON), and
copied into the outbox's session.started entry. `flat()` turns it back into the
consumer-facing fields. The IP is kept whole, truncated (/24, /48) or as a keyed hash,
as DNI_IP_MODE says.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import msgspec

from .models import ATTRIBUTION_FIELDS

_json = msgspec.json.Decoder(dict[str, str])


def pack(ip: str, user_agent: bytes, attribution_json: bytes) -> bytes:
    return ip.encode() + b"\n" + user_agent + b"\n" + attribution_json


def flat(source: bytes | str | None) -> dict[str, str]:
    """The source as flat string fields: ip, user_agent and the attribution fields given."""
    if not source:
        return {}
    raw = source.encode() if isinstance(source, str) else source
    ip, ua, blob = (raw.split(b"\n", 2) + [b"", b""])[:3]
    out: dict[str, str] = {}
    try:
        fields = _json.decode(blob) if blob else {}
    except msgspec.DecodeError:
        fields = {}
    for name in ATTRIBUTION_FIELDS:
        if fields.get(name) is not None:
            out[name] = fields[name]
    if ip:
        out["ip"] = ip.decode()
    if ua:
        out["user_agent"] = ua.decode("utf-8", "replace")
    return out


class IpPolicy:
    """How the visitor's IP is stored: `full`, `truncate` (/24 and /48) or `hash`."""

    def __init__(self, mode: str = "full", key: str = "") -> None:
        if mode not in ("full", "truncate", "hash"):
            raise ValueError(f"DNI_IP_MODE={mode!r}: use full, truncate or hash")
        if mode == "hash" and not key:
            raise ValueError("DNI_IP_MODE=hash needs DNI_IP_HASH_KEY")
        self.mode = mode
        self.key = key.encode()

    def apply(self, ip: str) -> str:
        if not ip or self.mode == "full":
            return ip
        if self.mode == "hash":
            return "h:" + hmac.new(self.key, ip.encode(), hashlib.sha256).hexdigest()[:32]
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        prefix = 24 if addr.version == 4 else 48
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)
