"""POST /v1/calls: attribute a phone call to the session that held the called number.

Accepts JSON ({"to", "from", "call_id", "at"}) with the admin token, or Twilio's voice
webhook form fields (To, From, CallSid) signed with X-Twilio-Signature when
DNI_TWILIO_AUTH_TOKEN is set. Each call id is answered and streamed once (`dni:calls`);
a repeat gets the first answer back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .admin import BEARER, authorized
from .errors import ApiError
from .http import json_response, read_body
from .models import WHOLE, decode
from .phone import InvalidNumber, normalize
from .sidecar import SAFETY_CAP
from .source import flat

CALL_ID_KEEP_S = 7 * 86400


# epoch ms up to the end of year 9999: anything later is a unit mistake, not a time
CallTime = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999, description=(
    "The call's time, epoch milliseconds (left out: now). " + WHOLE))]
# a provider's call id (Twilio's CallSid is 34): 422 invalid_call_id outside 1-128
CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CallRequest(msgspec.Struct):
    to: str
    call_id: CallId
    from_: str | None = msgspec.field(name="from", default=None)
    at: CallTime | None = None


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's request signature: HMAC-SHA1 over the full URL followed by each POST
    parameter's name and value, sorted by name; base64."""
    data = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _public_url(request: Request) -> str:
    base = request.app.state.settings.public_url
    if base:
        url = base + request.url.path
        return url + ("?" + request.url.query if request.url.query else "")
    return str(request.url)


async def _parse(request: Request) -> tuple[dict[str, Any], bool]:
    """The call's fields and whether they came as a signed Twilio webhook."""
    settings = request.app.state.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        body = await read_body(request.scope, request.receive, settings.max_body_bytes,
                               (b"application/x-www-form-urlencoded",))
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        signed = False
        if not authorized(request):
            token = settings.twilio_auth_token
            if not token:
                raise ApiError(401, "unauthorized", "missing or wrong bearer token", BEARER)
            given = request.headers.get("x-twilio-signature", "")
            expected = twilio_signature(token, _public_url(request), params)
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise ApiError(403, "bad_signature", "X-Twilio-Signature is missing or wrong")
            signed = True
        missing = [f for f in ("To", "CallSid") if not params.get(f)]
        if missing:
            raise ApiError(422, "missing_field", f"missing form field(s): {', '.join(missing)}")
        return {"to": params["To"], "from": params.get("From") or None,
                "call_id": params["CallSid"], "at": None}, signed
    if not authorized(request):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", BEARER)
    req = decode(await read_body(request.scope, request.receive, settings.max_body_bytes),
                 CallRequest)
    return {"to": req.to, "from": req.from_, "call_id": req.call_id, "at": req.at}, False


async def post_call(request: Request) -> Response:
    state = request.app.state
    settings = state.settings
    call, _ = await _parse(request)
    # JSON bodies were held to CallId by the decoder; a form's CallSid is checked here
    if not call["call_id"] or len(call["call_id"]) > 128:
        raise ApiError(422, "invalid_call_id", "call_id must be 1-128 characters")
    try:
        to = normalize(call["to"], settings.default_region)
    except InvalidNumber as exc:
        raise ApiError(422, "invalid_number", str(exc)) from None
    raw_caller = call["from"] or ""
    try:
        caller = normalize(raw_caller, settings.default_region) if raw_caller else ""
    except InvalidNumber:  # "Anonymous", "266696687"...: no number, kept as `from_raw`
        caller = ""
    answer = await attribute(state, to, call["at"], settings.call_grace_s * 1000)
    answer.update({"call_id": call["call_id"], "to": to, "from": caller or None})
    event = "call.attributed" if answer["attributed"] else "call.unattributed"
    entry = {"event": event, "call_id": call["call_id"], "to": to, "from": caller,
             "at": str(answer["at"])}
    if raw_caller and not caller:
        answer["from_raw"] = entry["from_raw"] = raw_caller
    for name in ("pool_id", "session_id", "visitor_id", "number", "reason", "match",
                 "started_at"):
        if answer.get(name) is not None:
            entry[name] = str(answer[name])
    entry.update(answer.get("attribution", {}))
    keys = state.engine.keys
    first, stored = await state.redis.evalsha(
        state.engine.scripts["record_call"],
        [keys.call_seen(call["call_id"]), keys.calls_stream()],
        [CALL_ID_KEEP_S, SAFETY_CAP * settings.stream_maxlen, orjson.dumps(answer),
         *(x for kv in entry.items() for x in kv)])
    body = stored if isinstance(stored, bytes) else orjson.dumps(answer)
    return json_response(body, cors=False)


async def attribute(state: Any, to: str, at: int | None, grace_ms: int) -> dict[str, Any]:
    keys = state.engine.keys
    pool_id = await state.redis.read("HGET", keys.number_index(), to)
    if pool_id is None:
        backup_of = await state.redis.read("HGET", keys.backup_index(), to)
        reason = "backup_number" if backup_of is not None else "not_a_pool_number"
        out: dict[str, Any] = {"attributed": False, "reason": reason,
                               "at": at if at is not None else None}
        if backup_of is not None:
            out["pool_id"] = backup_of.decode()
        if out["at"] is None:
            sec, usec = await state.redis.read("TIME")
            out["at"] = int(sec) * 1000 + int(usec) // 1000
        return out
    pool_id = pool_id.decode()
    match, lease, source, lease_end, at_ms = await state.redis.evalsha(
        state.engine.scripts["attribute_call"],
        [keys.pool(pool_id), keys.numbers(pool_id), keys.inactive(pool_id),
         keys.holders(pool_id)],
        [to, "" if at is None else at, grace_ms])
    match = match.decode()
    if match not in ("live", "grace"):
        reason = "not_a_pool_number" if match == "no_pool" else match
        return {"attributed": False, "reason": reason, "pool_id": pool_id, "at": at_ms}
    sid, vid, started = lease.decode().split("|")[:3]
    return {"attributed": True, "pool_id": pool_id, "session_id": sid, "visitor_id": vid,
            "number": to, "match": match, "started_at": int(started), "at": at_ms,
            "attribution": flat(source)}


routes = [Route("/v1/calls", post_call, methods=["POST"])]
