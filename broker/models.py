"""Request and response shapes (msgspec Structs): validation and encoding in one place."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import ApiError

POOL_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
POOL_ID_RE = re.compile(POOL_ID_PATTERN)
PoolId = Annotated[str, Meta(pattern=POOL_ID_PATTERN)]
# No "|" (the lease separator), no braces, no spaces: a visitor id can never leave its key.
VisitorId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}\Z")]
SessionId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
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


# msgspec decodes an int field from a JSON integer only: 60.0 and 6e1 are floats (422),
# though JSON Schema's "integer" would allow 60.0; the schema's descriptions say so.
WHOLE = "Written as a JSON integer, without a fraction or exponent (60, not 60.0 or 6e1)."
CallFlow = Annotated[str, Meta(max_length=200)]
SessionTtl = Annotated[int, Meta(ge=1, le=86400, description="Session length in seconds. "
                                 + WHOLE)]
PoolName = Annotated[str, Meta(min_length=1, max_length=200)]


class Buy(Struct):
    """Buy `count` numbers (in `area_code`, containing `contains`) from `provider`."""

    provider: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}\Z")]
    count: Annotated[int, Meta(ge=1, le=100, description=WHOLE)]
    area_code: Annotated[str, Meta(pattern=r"^[0-9]{2,5}\Z")] | None = None
    contains: Annotated[str, Meta(pattern=r"^[0-9]{1,10}\Z")] | None = None
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}\Z")] = "US"


class PoolCreate(Struct):
    name: PoolName
    website_url: Url | None = None
    target_number: str | None = None
    call_flow: CallFlow | None = None
    session_ttl_s: SessionTtl | None = None
    fallback_number: str | None = None
    policy: Literal["random", "lru"] = "random"
    numbers: Annotated[list[str], Meta(max_length=10000)] = []
    buy: Buy | None = None


class PoolUpdate(Struct):
    """PATCH: fields left out are unchanged; null clears an optional field."""

    name: PoolName | msgspec.UnsetType = msgspec.UNSET
    website_url: Url | None | msgspec.UnsetType = msgspec.UNSET
    target_number: str | None | msgspec.UnsetType = msgspec.UNSET
    call_flow: CallFlow | None | msgspec.UnsetType = msgspec.UNSET
    session_ttl_s: SessionTtl | msgspec.UnsetType = msgspec.UNSET
    fallback_number: str | None | msgspec.UnsetType = msgspec.UNSET
    policy: Literal["random", "lru"] | msgspec.UnsetType = msgspec.UNSET


class NumbersAdd(Struct):
    """Existing numbers and/or numbers to buy; `call_flow` defaults to the pool's."""

    numbers: Annotated[list[str], Meta(max_length=10000)] = []
    buy: Buy | None = None
    call_flow: CallFlow | None = None


_FIELD_CODES = {"pool_id": "invalid_pool_id", "visitor_id": "invalid_visitor_id",
                "session_id": "invalid_session_id", "session_ttl_s": "invalid_session_ttl",
                "policy": "invalid_policy", "provider": "invalid_provider",
                "count": "invalid_count", "area_code": "invalid_area_code",
                "contains": "invalid_pattern", "country": "invalid_country",
                "at": "invalid_at", "call_id": "invalid_call_id"}
_AT_RE = re.compile(r"- at `\$((?:\.[A-Za-z_]+)*)")


def _validation_code(message: str) -> str:
    if message.startswith("Object missing required field"):
        return "missing_field"
    m = _AT_RE.search(message)
    field = m.group(1).rsplit(".", 1)[-1] if m else ""
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
        # msgspec validates while it parses: a type error may come before a syntax error
        # (a body cut short); malformed JSON is 400 whatever it held before the cut
        try:
            msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "bad_json", "the body is not valid JSON") from None
        raise ApiError(422, _validation_code(str(exc)), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:  # msgspec raises it for invalid UTF-8 inside a string
        raise ApiError(400, "bad_json", "the body is not valid JSON: invalid UTF-8") from None
    except RecursionError:  # nesting deeper than the decoder's recursion limit
        raise ApiError(400, "bad_json", "the body is not valid JSON: nested too deep") from None


encoder = msgspec.json.Encoder()
