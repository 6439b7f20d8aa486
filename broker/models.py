"""Request and response shapes (msgspec Structs): validation and encoding in one place."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import ApiError

POOL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
POOL_ID_RE = re.compile(POOL_ID_PATTERN)
PoolId = Annotated[str, Meta(pattern=POOL_ID_PATTERN)]
# No "|" (the lease separator), no braces, no spaces: a visitor id can never leave its key.
VisitorId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
SessionId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Url = Annotated[str, Meta(max_length=4096)]
Tag = Annotated[str, Meta(max_length=512)]

ATTRIBUTION_FIELDS = (
    "landing_page", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term",
    "utm_content", "gclid", "fbclid", "msclkid",
)


class Attribution(Struct, omit_defaults=True):
    """Where the visitor came from: the page's source fields, stored as given."""

    landing_page: Url | None = None
    referrer: Url | None = None
    utm_source: Tag | None = None
    utm_medium: Tag | None = None
    utm_campaign: Tag | None = None
    utm_term: Tag | None = None
    utm_content: Tag | None = None
    gclid: Tag | None = None
    fbclid: Tag | None = None
    msclkid: Tag | None = None


class SessionRequest(Struct):
    """The ids of a session request; the same body also decodes as an Attribution."""

    pool_id: PoolId
    visitor_id: VisitorId


class SessionResponse(Struct, omit_defaults=False):
    status: str
    number: str | None
    session_id: str | None
    expires_at: int | None
    heartbeat_s: int


class HeartbeatRequest(Struct):
    pool_id: PoolId
    visitor_id: VisitorId
    session_id: SessionId


class HeartbeatResponse(Struct):
    status: str
    number: str | None
    expires_at: int | None


class PoolCreate(Struct):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    website_url: Url | None = None
    target_number: str | None = None
    call_flow: Annotated[str, Meta(max_length=200)] | None = None
    session_ttl_s: Annotated[int, Meta(ge=1, le=86400)] | None = None
    fallback_number: str | None = None
    policy: Literal["random", "lru"] = "random"
    numbers: Annotated[list[str], Meta(max_length=10000)] = []


class NumbersAdd(Struct):
    numbers: Annotated[list[str], Meta(min_length=1, max_length=10000)]


_FIELD_CODES = {"pool_id": "invalid_pool_id", "visitor_id": "invalid_visitor_id",
                "session_id": "invalid_session_id", "session_ttl_s": "invalid_session_ttl",
                "policy": "invalid_policy"}
_AT_RE = re.compile(r"- at `\$\.?([A-Za-z_]*)")


def _validation_code(message: str) -> str:
    if message.startswith("Object missing required field"):
        return "missing_field"
    m = _AT_RE.search(message)
    field = m.group(1) if m else ""
    if field in _FIELD_CODES:
        return _FIELD_CODES[field]
    if "length <=" in message:
        return "too_long"
    if "Expected `object`" in message and not field:
        return "invalid_body"
    return "invalid_field"


_decoders: dict[type, msgspec.json.Decoder] = {}


def decode(body: bytes, cls: type[Struct]) -> Struct:
    """Decode and validate a JSON body; raise ApiError 400/422 with a specific code."""
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.json.Decoder(cls)
    try:
        return dec.decode(body)
    except msgspec.ValidationError as exc:
        raise ApiError(422, _validation_code(str(exc)), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None


encoder = msgspec.json.Encoder()
