"""The served OpenAPI document against the real broker.

Every operation the document names is requested for real (and every status it documents
besides 4XX/5XX: 200, 201, 204, 304), and each answer's status, headers and body must be
what the document says, its schemas' $refs resolved against its components. The answer
schemas are closed (additionalProperties: false) with their required fields listed, so a
handler that adds, renames or drops a field fails here until the document follows; an
optional field that no answer carries any more fails the coverage check at the end. The
request bodies sent are checked against the document too, and the app's routes against
its paths.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import pytest
import redis

from broker.app import create_app
from broker.calls import CallRequest
from broker.errors import ApiError
from broker.models import PoolCreate, PoolUpdate, decode
from broker.settings import Settings
from tests.conftest import numbers

UA = "Mozilla/5.0 (X11; Linux x86_64) DNI-openapi-test"
SOURCE = {
    "landing_page": "https://shop.example/?utm_source=google", "referrer": "https://g.example/",
    "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring",
    "utm_term": "plumber", "utm_content": "ad1", "gclid": "g1", "fbclid": "f1", "msclkid": "m1",
}
# Optional answer fields this scenario cannot make the shared broker write: the sidecar
# counts trimming only once a stream is over DNI_STREAM_MAXLEN (1,000,000 here).
NOT_PRODUCED = {("SidecarCounters", "trimmed"), ("SidecarCounters", "trim_dropped_pending")}


class Spec:
    """The served document, and what the requests made so far have shown of it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.answered: set[tuple[str, str, str]] = set()  # (method, path, status)
        self.fields: set[tuple[str, str]] = set()  # (component, property) seen in answers

    def validator(self, schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
        # "#/components/..." resolves against the document's components
        root = {**schema, "components": self.doc["components"]}
        return jsonschema.Draft202012Validator(root)

    def validate(self, instance: Any, schema: dict[str, Any], what: str) -> None:
        errors = sorted(self.validator(schema).iter_errors(instance), key=str)
        assert not errors, f"{what}:\n" + "\n".join(
            f"  {e.json_path}: {e.message}" for e in errors) + f"\n  instance: {instance!r}"

    def call(self, client: httpx.Client, method: str, path: str, url: str | None = None,
             **kwargs: Any) -> httpx.Response:
        """Send a request to the documented `path` (filled in as `url`), check the body
        sent against the document and the answer against it; return the answer."""
        assert method in self.doc["paths"].get(path, {}), f"{method} {path} is not documented"
        op = self.doc["paths"][path][method]
        if "json" in kwargs:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            self.validate(kwargs["json"], schema, f"request of {method} {path}")
        if "content" in kwargs:  # JSON sent as text/plain (a simple CORS request)
            assert kwargs["headers"]["Content-Type"] == "text/plain"
            schema = op["requestBody"]["content"]["text/plain"]["schema"]
            self.validate(json.loads(kwargs["content"]), schema, f"request of {method} {path}")
        if "data" in kwargs:
            schema = op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
            self.validate(kwargs["data"], schema, f"form of {method} {path}")
        res = client.request(method.upper(), url or path, **kwargs)
        status = str(res.status_code)
        what = f"{method.upper()} {url or path} -> {status}"
        assert status in op["responses"], f"{what} is not documented: {res.text[:300]}"
        answer = op["responses"][status]
        for name, header in answer.get("headers", {}).items():
            if "$ref" in header:
                header = self.doc["components"]["headers"][header["$ref"].rsplit("/", 1)[-1]]
            assert name in res.headers, f"{what}: documented header {name} missing"
            self.validate(res.headers[name], header["schema"], f"{what} header {name}")
        content = answer.get("content")
        if not res.content:
            assert not content, f"{what}: the document describes a body, none came"
        else:
            assert content, f"{what}: a body the document does not describe: {res.text[:300]}"
            media = res.headers["content-type"].split(";")[0].strip()
            assert media in content, f"{what}: {media} is not documented ({list(content)})"
            body = res.json() if media == "application/json" else res.text
            self.validate(body, content[media]["schema"], what)
            self.record(body, content[media]["schema"])
        self.answered.add((method, path, status))
        return res

    def resolve(self, schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        name = ref.rsplit("/", 1)[-1]
        return name, self.doc["components"]["schemas"][name]

    def record(self, instance: Any, schema: dict[str, Any]) -> None:
        """Note which properties of which components this (valid) instance carries."""
        name, schema = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            for branch in schema.get(key, ()):
                if self.validator(branch).is_valid(instance):
                    self.record(instance, branch)
        if isinstance(instance, dict):
            props = schema.get("properties", {})
            for field, value in instance.items():
                if field in props:
                    if name:
                        self.fields.add((name, field))
                    self.record(value, props[field])
                elif isinstance(schema.get("additionalProperties"), dict):
                    self.record(value, schema["additionalProperties"])
        elif isinstance(instance, list) and "items" in schema:
            for item in instance:
                self.record(item, schema["items"])

    def answer_components(self) -> set[str]:
        """The components that answers' schemas reach (through $refs, at any depth)."""
        found: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                ref = node.get("$ref")
                if ref and ref.rsplit("/", 1)[-1] not in found:
                    name = ref.rsplit("/", 1)[-1]
                    found.add(name)
                    walk(self.doc["components"]["schemas"][name])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        for ops in self.doc["paths"].values():
            for op in ops.values():
                for status, answer in op["responses"].items():
                    if not status.endswith("XX"):
                        walk(answer.get("content", {}))
        return found


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the Starlette app (HEAD comes with GET).
    /bench/constant is mounted only with DNI_BENCH_ROUTES=1 and is no part of the API."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    return {(m.lower(), route.path) for route in app.routes
            for m in getattr(route, "methods", None) or () if m != "HEAD"}


@pytest.fixture
def spec(http: httpx.Client) -> Spec:
    res = http.get("/openapi.json")
    assert res.status_code == 200
    return Spec(res.json())


def test_every_route_is_documented_and_every_documented_path_served(spec):
    documented = {(m, path) for path, ops in spec.doc["paths"].items() for m in ops}
    routes = app_routes()
    assert routes - documented == set(), "routes the document leaves out"
    assert documented - routes == set(), "documented operations no route serves"


@pytest.mark.parametrize("cls, body, code", [
    (PoolCreate, b'{"name": "p", "session_ttl_s": 60.0}', "invalid_session_ttl"),
    (PoolUpdate, b'{"session_ttl_s": 6e1}', "invalid_session_ttl"),
    (PoolCreate, b'{"name": "p", "buy": {"provider": "sandbox", "count": 1.0}}', "invalid_count"),
    (CallRequest, b'{"to": "+15550100000", "call_id": "c", "at": 1764210000000.0}', "invalid_at"),
])
def test_integer_fields_take_json_integers_only(spec, cls, body, code):
    """What the document says of its integer fields (JSON Schema's `integer` alone would
    admit 60.0): a number with a fraction or exponent is 422."""
    assert "60.0" in spec.doc["info"].get("description", "")
    with pytest.raises(ApiError) as err:
        decode(body, cls)
    assert (err.value.status, err.value.code) == (422, code)


def test_every_operation_answers_as_documented(spec, http, admin, r: redis.Redis):
    call = spec.call
    call(http, "get", "/openapi.json")
    call(http, "get", "/healthz")
    call(http, "get", "/readyz")

    # -- admin: pools and numbers -----------------------------------------------------
    tracking = numbers(4, 100)
    pool = call(admin, "post", "/v1/pools", json={
        "name": "openapi", "website_url": "https://shop.example/", "call_flow": "flow-a",
        "target_number": "+15550199999", "fallback_number": "+15550199998",
        "session_ttl_s": 600, "policy": "lru", "numbers": tracking[:2],
        "buy": {"provider": "sandbox", "count": 1}}).json()
    assert pool["bought"]
    pid = pool["id"]
    # a pool with every optional field left out (nulls), one number, no backup
    bare = call(admin, "post", "/v1/pools", json={"name": "bare",
                                                  "numbers": tracking[2:3]}).json()
    assert bare["target_number"] is None and "bought" not in bare
    call(admin, "get", "/v1/pools")
    call(admin, "get", "/v1/pools/{pool_id}", f"/v1/pools/{pid}")
    call(admin, "patch", "/v1/pools/{pool_id}", f"/v1/pools/{bare['id']}",
         json={"name": "bare too", "website_url": None, "session_ttl_s": 300})
    numbered = "/v1/pools/{pool_id}/numbers/{number}"
    one = f"/v1/pools/{pid}/numbers/{tracking[0]}"
    call(admin, "post", numbered + "/deactivate", one + "/deactivate")
    call(admin, "post", numbered + "/activate", one + "/activate")
    call(admin, "post", numbered + "/deactivate", one + "/deactivate")
    added = call(admin, "post", "/v1/pools/{pool_id}/numbers", f"/v1/pools/{pid}/numbers",
                 json={"numbers": [tracking[0], tracking[3]], "call_flow": "flow-b",
                       "buy": {"provider": "sandbox", "count": 1}}).json()
    assert (added["added"], added["reactivated"], len(added["bought"])) == (2, 1, 1)
    free = call(admin, "post", "/v1/calls", json={"to": tracking[3], "call_id": "CA-free"})
    assert free.json()["reason"] == "no_session"  # a number of the pool no session held

    # -- edge -------------------------------------------------------------------------
    # a session that runs out: the sidecar reports its end (`ended_reported`)
    short = call(admin, "post", "/v1/pools", json={"name": "short", "session_ttl_s": 1,
                                                   "numbers": numbers(1, 200)}).json()
    call(http, "post", "/v1/dni/session", json={"pool_id": short["id"], "visitor_id": "s"})
    for path in ("/v1/dni/session", "/v1/dni/heartbeat"):
        call(http, "options", path, headers={"Origin": "https://shop.example",
                                             "Access-Control-Request-Method": "POST"})
    ua = {"User-Agent": UA}
    new = call(http, "post", "/v1/dni/session", headers=ua,
               json={"pool_id": pid, "visitor_id": "v1", **SOURCE}).json()
    assert new["status"] == "new"
    reused = call(http, "post", "/v1/dni/session", headers={**ua, "Content-Type": "text/plain"},
                  content=json.dumps({"pool_id": pid, "visitor_id": "v1"})).json()
    assert reused["status"] == "reused"
    beat = {"pool_id": pid, "visitor_id": "v1", "session_id": new["session_id"]}
    assert call(http, "post", "/v1/dni/heartbeat", json=beat).json()["status"] == "alive"
    gone = {**beat, "session_id": "no-such-session"}
    assert call(http, "post", "/v1/dni/heartbeat", json=gone).json()["status"] == "expired"
    bid = bare["id"]
    answers = [call(http, "post", "/v1/dni/session", headers=ua,
                    json={"pool_id": bid, "visitor_id": f"b{i}"}).json()["status"]
               for i in range(2)]
    assert answers == ["new", "unavailable"]
    for i in range(4):  # pid has 5 active numbers and v1 holds one: these take the rest
        call(http, "post", "/v1/dni/session", headers=ua,
             json={"pool_id": pid, "visitor_id": f"p{i}"})
    fallback = call(http, "post", "/v1/dni/session", headers=ua,
                    json={"pool_id": pid, "visitor_id": "late"}).json()
    assert fallback["status"] == "fallback"
    bot = call(http, "post", "/v1/dni/session", headers={"User-Agent": "Googlebot/2.1"},
               json={"pool_id": pid, "visitor_id": "crawler"}).json()
    assert bot["status"] == "excluded"

    # -- calls ------------------------------------------------------------------------
    calls = [
        call(admin, "post", "/v1/calls", json={"to": new["number"], "from": "+15550177777",
                                              "call_id": "CA-live"}),
        call(admin, "post", "/v1/calls", json={"to": "+15550188888", "call_id": "CA-none",
                                              "from": "Anonymous", "at": 1764210000000}),
        call(admin, "post", "/v1/calls", json={"to": "+15550199998", "call_id": "CA-backup"}),
        call(admin, "post", "/v1/calls", data={"To": new["number"], "From": "Anonymous",
                                              "CallSid": "CA-form", "CallStatus": "ringing"}),
    ]
    got = [(c.json()["attributed"], c.json().get("reason")) for c in calls]
    assert got == [(True, None), (False, "not_a_pool_number"), (False, "backup_number"),
                   (True, None)]

    # -- stats and streams --------------------------------------------------------------
    r.xgroup_create("dni:sessions", "crm", id="0", mkstream=True)
    r.xreadgroup("crm", "worker-1", {"dni:sessions": ">"}, count=1)
    # before any stats: they end the sessions that ran out themselves, leaving the
    # sidecar nothing to report
    wait_for(lambda: admin.get("/v1/streams").json()["sidecar"].get("ended_reported"))
    streams = call(admin, "get", "/v1/streams").json()
    assert streams["streams"]["dni:sessions"]["groups"][0]["name"] == "crm"
    call(admin, "get", "/v1/pools/{pool_id}/stats", f"/v1/pools/{pid}/stats")
    call(admin, "get", "/v1/stats", params={"target": "0.05"})

    # -- snippet, config, demo ------------------------------------------------------------
    info = call(http, "get", "/v1/dni/snippet").json()
    pinned = httpx.URL(info["url"]).path
    for path, url in (("/snippet.js", "/snippet.js"), ("/snippet.{hash8}.js", pinned)):
        etag = call(http, "get", path, url).headers["etag"]
        call(http, "get", path, url, headers={"If-None-Match": etag})
    query = {"pools": f"{pid},{bid},nosuchpool"}
    config = call(http, "get", "/v1/dni/config", params=query)
    assert set(config.json()["pools"]) == {pid, bid}
    call(http, "get", "/v1/dni/config", params=query,
         headers={"If-None-Match": config.headers["etag"]})
    call(http, "get", "/demo", params={"pool": pid})
    call(http, "get", "/demo")

    # -- removals ---------------------------------------------------------------------------
    call(admin, "delete", numbered, f"/v1/pools/{pid}/numbers/{tracking[3]}")
    call(admin, "delete", "/v1/pools/{pool_id}", f"/v1/pools/{bid}")

    # every operation, with every status documented for it (not 4XX/5XX), was answered
    documented = {(m, path, status) for path, ops in spec.doc["paths"].items()
                  for m, op in ops.items() for status in op["responses"]
                  if not status.endswith("XX")}
    assert documented - spec.answered == set(), "documented answers never seen"
    assert spec.answered - documented == set()
    # every property of every answer shape was seen in some answer
    expected = {(name, field) for name in spec.answer_components()
                for field in spec.doc["components"]["schemas"][name].get("properties", {})}
    assert expected - spec.fields - NOT_PRODUCED == set(), "documented fields never answered"
