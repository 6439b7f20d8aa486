"""The tracking snippet's routes: the script itself, its pinned URL, per-pool config, /demo.

- `GET /snippet.js`: the built snippet (`snippet/dni.min.js`), with an `ETag` and a short
  `Cache-Control`, so a site's visitors revalidate within minutes of an upgrade, and
  `Cross-Origin-Resource-Policy: cross-origin`: the plain tag is a no-cors request, which
  a page with `Cross-Origin-Embedder-Policy: require-corp` allows only with that header.
- `GET /snippet.<hash8>.js`: the same bytes under a URL that names them, cached for a year
  (`immutable`); any other hash is a 404.
- `GET /v1/dni/snippet`: that URL and its Subresource Integrity hash, for sites that pin it.
- `GET /v1/dni/config?pools=ID,ID`: what the snippet needs to know of each pool (its
  target number); unknown pools are left out. Public and cacheable, like the script.
- `GET /demo?pool=ID`: a page showing the pool's target number in several formats with the
  install tag, so the swap can be watched end to end. It creates nothing itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import orjson
import phonenumbers
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import CORS_HEADERS, ApiError
from .models import POOL_ID_RE

# Inside an installed wheel first, then the source tree (snippet/build.mjs writes it).
CANDIDATES = (
    Path(__file__).resolve().parent / "static" / "dni.min.js",
    Path(__file__).resolve().parent.parent / "snippet" / "dni.min.js",
)
MAX_POOLS = 20
SCRIPT_MAX_AGE = 300
CONFIG_MAX_AGE = 300
# Cache-Control of each cacheable answer (200 and 304 alike; /openapi.json shows them)
SCRIPT_CACHE = f"public, max-age={SCRIPT_MAX_AGE}"
PINNED_CACHE = "public, max-age=31536000, immutable"
CONFIG_CACHE = f"public, max-age={CONFIG_MAX_AGE}"
# Any origin may read the script (SRI with crossorigin) and embed it (under COEP).
_SCRIPT_HEADERS = {"access-control-allow-origin": "*",
                   "cross-origin-resource-policy": "cross-origin"}


@dataclass(frozen=True)
class Built:
    body: bytes
    etag: str  # quoted, as sent
    hash8: str  # names the pinned URL
    integrity: str  # "sha384-<base64>"


_cache: dict[tuple[Path, int], Built] = {}


def built() -> Built:
    """The built snippet, read once per file version (a rebuild needs no restart)."""
    for path in CANDIDATES:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            continue
        found = _cache.get((path, stamp))
        if found is None:
            body = path.read_bytes()
            digest = hashlib.sha384(body).digest()
            hex_ = digest.hex()
            found = Built(body, f'"{hex_[:16]}"', hex_[:8],
                          "sha384-" + base64.b64encode(digest).decode())
            _cache.clear()
            _cache[(path, stamp)] = found
        return found
    raise ApiError(503, "snippet_missing",
                   "the snippet is not built: run `npm ci && node build.mjs` in snippet/")


def _etag_matches(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match", "")
    return given.strip() == "*" or etag in (t.strip().removeprefix("W/") for t in given.split(","))


def _cached(request: Request, body: bytes, etag: str, cache_control: str,
            media_type: str) -> Response:
    headers = {"etag": etag, "cache-control": cache_control, **_SCRIPT_HEADERS}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type=media_type)


async def snippet_js(request: Request) -> Response:
    b = built()
    return _cached(request, b.body, b.etag, SCRIPT_CACHE, "text/javascript; charset=utf-8")


async def pinned_js(request: Request) -> Response:
    b = built()
    if request.path_params["hash8"] != b.hash8:
        raise ApiError(404, "not_found", "no snippet of that version: ask /v1/dni/snippet")
    return _cached(request, b.body, b.etag, PINNED_CACHE, "text/javascript; charset=utf-8")


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), headers={**CORS_HEADERS, **(headers or {})},
                    media_type="application/json")


async def snippet_info(request: Request) -> Response:
    b = built()
    url = str(request.url_for("pinned_js", hash8=b.hash8))
    tag = (f'<script async src="{url}" integrity="{b.integrity}" crossorigin="anonymous" '
           f'data-pools="POOL_ID"></script>')
    return _json({"url": url, "integrity": b.integrity, "tag": tag, "size": len(b.body)})


def _pool_ids(raw: str) -> list[str]:
    ids = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if not ids:
        raise ApiError(422, "missing_field", "give the pools as ?pools=ID,ID")
    if len(ids) > MAX_POOLS:
        raise ApiError(422, "too_many_pools", f"at most {MAX_POOLS} pools per request")
    for pool_id in ids:
        if not POOL_ID_RE.match(pool_id):
            raise ApiError(422, "invalid_pool_id", f"{pool_id[:80]!r} is not a pool id")
    return ids


def _country_code(number: str) -> int | None:
    try:
        return phonenumbers.parse(number).country_code
    except phonenumbers.NumberParseException:
        return None


async def _targets(request: Request, ids: list[str]) -> list[bytes | None]:
    state = request.app.state
    keys = state.engine.keys
    return await asyncio.gather(
        *(state.redis.execute("HGET", keys.pool(i), "target_number") for i in ids))


async def config(request: Request) -> Response:
    ids = _pool_ids(request.query_params.get("pools", ""))
    heartbeat_s = request.app.state.settings.heartbeat_s
    pools = {}
    for pool_id, target in zip(ids, await _targets(request, ids)):
        if target is None:  # no such pool (a pool always has the field, maybe empty)
            continue
        number = target.decode() or None
        pools[pool_id] = {"target_number": number,
                          "country_code": _country_code(number) if number else None,
                          "heartbeat_s": heartbeat_s}
    body = orjson.dumps({"pools": pools})
    etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    headers = {**CORS_HEADERS, "etag": etag, "cache-control": CONFIG_CACHE}
    if _etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type="application/json")


_DEMO_HELP = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DNI demo</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto">
<h1>DNI demo</h1>
<p>Open <code>/demo?pool=POOL_ID</code> with the id of a pool that has a target number.
This page creates nothing; make a pool first, for example:</p>
<pre>curl -s -X POST {base}v1/pools \\
  -H "Authorization: Bearer $DNI_ADMIN_TOKEN" -H "Content-Type: application/json" \\
  -d '{{"name": "demo", "target_number": "+15550100000",
       "numbers": ["+15550100001", "+15550100002", "+15550100003"]}}'</pre>
</body></html>
"""

_DEMO = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DNI demo: {name}</title>
{tag}
</head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto">
<h1>DNI demo: {name}</h1>
<p>This page shows pool <code>{pool}</code>'s target number. The snippet below asks the
broker for a tracking number for this browser and swaps every occurrence.</p>
<ul>
  <li>National: <span class="num">{national}</span></li>
  <li>International: <span class="num">{international}</span></li>
  <li>E.164: <span class="num">{e164}</span></li>
  <li>Link: <a href="tel:{e164}">call {national}</a>, <a href="sms:{e164}">text us</a></li>
  <li data-dni-noswap>Never swapped (<code>data-dni-noswap</code>): {national}</li>
  <li id="later"><button type="button" id="add">Add the number later</button></li>
</ul>
<p>Install tag:</p>
<pre data-dni-noswap>{tag_text}</pre>
<script>
document.getElementById("add").addEventListener("click", function () {{
  var li = document.createElement("li");
  li.textContent = "Added after load: {digits}";
  document.getElementById("later").after(li);
}});
</script>
</body></html>
"""


async def demo(request: Request) -> Response:
    pool_id = request.query_params.get("pool")
    base = str(request.base_url)
    if not pool_id:
        return HTMLResponse(_DEMO_HELP.format(base=html.escape(base)))
    if not POOL_ID_RE.match(pool_id):
        raise ApiError(404, "pool_not_found", f"pool {pool_id[:80]!r} does not exist")
    state = request.app.state
    name, target = await state.redis.execute("HMGET", state.engine.keys.pool(pool_id),
                                              "name", "target_number")
    if name is None:
        raise ApiError(404, "pool_not_found", f"pool {pool_id!r} does not exist")
    if not target:
        raise ApiError(422, "no_target_number",
                       f"pool {pool_id!r} has no target_number to swap: PATCH one in first")
    e164 = target.decode()
    parsed = phonenumbers.parse(e164)
    fmt = phonenumbers.format_number
    src = html.escape(base + "snippet.js")
    tag = f'<script async src="{src}" data-pools="{pool_id}"></script>'
    return HTMLResponse(_DEMO.format(
        name=html.escape(name.decode()), pool=pool_id, tag=tag, tag_text=html.escape(tag),
        e164=e164, national=html.escape(fmt(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)),
        international=html.escape(fmt(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)),
        digits=str(parsed.national_number)))


routes: list[BaseRoute] = [
    Route("/snippet.js", snippet_js, methods=["GET"]),
    Route("/snippet.{hash8}.js", pinned_js, methods=["GET"], name="pinned_js"),
    Route("/v1/dni/snippet", snippet_info, methods=["GET"]),
    Route("/v1/dni/config", config, methods=["GET"]),
    Route("/demo", demo, methods=["GET"]),
]
