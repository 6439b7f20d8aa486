"""The edge and admin API through HTTP against a real `dni serve` and Redis."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import numbers


def error_of(res: httpx.Response) -> str:
    body = res.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return body["error"]["code"]


def test_heartbeat_interval_is_at_most_half_the_session_length(http, make_pool):
    """A page that beats as told never loses its session, even when the pool's sessions
    are shorter than DNI_HEARTBEAT_S (60 s)."""
    for ttl_s, beat in ((3, 1), (90, 45), (1800, 60), (1, 1)):
        pool = make_pool(1, session_ttl_s=ttl_s)
        res = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v"})
        assert res.json()["heartbeat_s"] == beat, (ttl_s, res.json())


def test_a_wrong_method_is_405_with_allow(http):
    res = http.get("/v1/dni/session")
    assert res.status_code == 405 and error_of(res) == "method_not_allowed"
    assert res.headers["allow"] == "OPTIONS, POST"
    # paths served by one route per method allow all of them
    for method, path, allow in (("PUT", "/v1/pools", "GET, HEAD, POST"),
                                ("PUT", "/v1/pools/p1", "DELETE, GET, HEAD, PATCH"),
                                ("GET", "/v1/pools/p1/numbers/+15550100001", "DELETE")):
        res = http.request(method, path)
        assert (res.status_code, res.headers.get("allow")) == (405, allow), (path, res.text)
    res = http.post("/v1/dni/session/", json={"pool_id": "p", "visitor_id": "v"})
    assert res.status_code == 404 and error_of(res) == "not_found"  # no redirect
    assert res.headers["access-control-allow-origin"] == "*"


def test_healthz_and_readyz(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200


def test_session_as_json_and_as_text_plain(http, make_pool):
    pool = make_pool(3, fallback_number="+15550199999")
    body = {"pool_id": pool["id"], "visitor_id": "v1", "utm_source": "google"}
    a = http.post("/v1/dni/session", json=body)
    assert a.status_code == 200
    got = a.json()
    assert set(got) == {"status", "number", "session_id", "expires_at", "heartbeat_s"}
    assert got["status"] == "new" and got["number"] in pool["numbers"]
    assert got["heartbeat_s"] == 60 and isinstance(got["expires_at"], int)
    b = http.post("/v1/dni/session", content=orjson.dumps(body),
                  headers={"content-type": "text/plain;charset=UTF-8"})
    assert b.json()["status"] == "reused"
    assert b.json()["session_id"] == got["session_id"] and b.json()["number"] == got["number"]
    assert a.headers["access-control-allow-origin"] == "*"


def test_preflight_answers_cors(http):
    res = http.options("/v1/dni/session", headers={"Origin": "https://shop.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert res.status_code == 204
    assert res.headers["access-control-allow-origin"] == "*"
    assert "POST" in res.headers["access-control-allow-methods"]


def test_heartbeat_alive_then_expired_for_wrong_session(http, make_pool):
    pool = make_pool(2)
    s = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "v"}).json()
    hb = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v",
                                              "session_id": s["session_id"]})
    assert hb.status_code == 200
    assert hb.json()["status"] == "alive" and hb.json()["number"] == s["number"]
    assert hb.json()["expires_at"] >= s["expires_at"]
    bad = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v",
                                               "session_id": "notmine"})
    assert bad.json() == {"status": "expired", "number": None, "expires_at": None}


def test_fallback_and_unavailable_over_http(http, make_pool):
    with_backup = make_pool(1, fallback_number="(555) 019-9999")
    assert with_backup["fallback_number"] == "+15550199999"
    without = make_pool(0)
    http.post("/v1/dni/session", json={"pool_id": with_backup["id"], "visitor_id": "a"})
    fb = http.post("/v1/dni/session", json={"pool_id": with_backup["id"], "visitor_id": "b"})
    assert fb.json() == {"status": "fallback", "number": "+15550199999", "session_id": None,
                         "expires_at": None, "heartbeat_s": 60}
    un = http.post("/v1/dni/session", json={"pool_id": without["id"], "visitor_id": "b"})
    assert un.json()["status"] == "unavailable" and un.json()["number"] is None


@pytest.mark.parametrize("body,status,code", [
    (b"{", 400, "bad_json"),
    (b"\xff\xfe", 400, "bad_json"),
    (b'{"pool_id": "p", "visitor_id": "v", "utm_source": "\xe9"}', 400, "bad_json"),
    (b"", 400, "bad_json"),
    # cut short after a value of the wrong type: still malformed JSON first
    (b'{"pool_id": 5, "visitor_id":', 400, "bad_json"),
    (b"[1,", 400, "bad_json"),
    (b"[]", 422, "invalid_body"),
    (b"{}", 422, "missing_field"),
    (b'{"pool_id": "p"}', 422, "missing_field"),
    (b'{"pool_id": "p{x}", "visitor_id": "v"}', 422, "invalid_pool_id"),
    (b'{"pool_id": "p", "visitor_id": "a{b"}', 422, "invalid_visitor_id"),
    (b'{"pool_id": "p", "visitor_id": "a|b"}', 422, "invalid_visitor_id"),
    (b'{"pool_id": "p", "visitor_id": ""}', 422, "invalid_visitor_id"),
    (b'{"pool_id": "p", "visitor_id": "v1\\n"}', 422, "invalid_visitor_id"),
    (b'{"pool_id": "p\\n", "visitor_id": "v1"}', 422, "invalid_pool_id"),
    pytest.param(b'{"pool_id": "p", "visitor_id": "v", "x": ' + b"[" * 5000 + b"]" * 5000
                 + b"}", 400, "bad_json", id="nested-5000-deep"),
    (b'{"pool_id": "p", "visitor_id": 42}', 422, "invalid_visitor_id"),
    (b'{"pool_id": "p", "visitor_id": "v", "utm_source": 3}', 422, "invalid_field"),
    (b'{"pool_id": "p", "visitor_id": "v", "gclid": "' + b"x" * 600 + b'"}', 422, "too_long"),
    (b'{"pool_id": "nosuchpool", "visitor_id": "v"}', 404, "pool_not_found"),
])
def test_bad_session_requests_get_the_error_shape(http, body, status, code):
    res = http.post("/v1/dni/session", content=body, headers={"content-type": "text/plain"})
    assert res.status_code == status, res.text
    assert error_of(res) == code
    assert res.headers["access-control-allow-origin"] == "*"


def test_body_over_the_limit_is_413(http, make_pool):
    pool = make_pool(1)
    big = orjson.dumps({"pool_id": pool["id"], "visitor_id": "v", "x": "y" * 20000})
    res = http.post("/v1/dni/session", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and error_of(res) == "too_large"

    def chunks():  # no Content-Length: chunked upload must be bounded too
        for _ in range(40):
            yield b" " * 1000

    res = http.post("/v1/dni/session", content=chunks(), headers={"content-type": "text/plain"})
    assert res.status_code == 413 and error_of(res) == "too_large"
    assert http.get("/healthz").status_code == 200


def test_wrong_content_type_method_and_path(http):
    res = http.post("/v1/dni/session", content=b"a=b",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert res.status_code == 415 and error_of(res) == "unsupported_media_type"
    assert error_of(http.get("/v1/dni/session")) == "method_not_allowed"
    assert error_of(http.get("/nowhere")) == "not_found"


def test_admin_requires_the_token(http, broker):
    assert error_of(http.post("/v1/pools", json={"name": "x"})) == "unauthorized"
    res = http.get("/v1/pools", headers={"Authorization": "Bearer wrong"})
    assert res.status_code == 401 and error_of(res) == "unauthorized"


def test_create_pool_normalises_numbers_and_defaults(admin):
    res = admin.post("/v1/pools", json={
        "name": "Spring campaign", "website_url": "https://plumber.example",
        "target_number": "555-010-0000", "numbers": ["(555) 010-0001", "+1 555 010 0002",
                                                    "5550100001"]})
    assert res.status_code == 201
    pool = res.json()
    assert pool["numbers"] == ["+15550100001", "+15550100002"]
    assert pool["target_number"] == "+15550100000"
    assert pool["session_ttl_s"] == 1800 and pool["heartbeat_s"] == 60
    assert pool["fallback_number"] is None and pool["policy"] == "random"
    assert {"id", "name", "website_url", "call_flow"} <= set(pool)
    assert admin.get(f"/v1/pools/{pool['id']}").json() == pool
    assert [p["id"] for p in admin.get("/v1/pools").json()["pools"]] == [pool["id"]]


@pytest.mark.parametrize("body,code", [
    ({"name": "x", "numbers": ["12"]}, "invalid_number"),
    ({"name": "x", "numbers": ["+1 555 010"]}, "invalid_number"),
    ({"name": "x", "fallback_number": "not a number"}, "invalid_number"),
    ({"name": "x", "session_ttl_s": 0}, "invalid_session_ttl"),
    ({"name": "x", "session_ttl_s": 86401}, "invalid_session_ttl"),
    ({"name": "x", "policy": "fifo"}, "invalid_policy"),
    ({"numbers": []}, "missing_field"),
    ({"name": ""}, "invalid_field"),
])
def test_create_pool_rejects_bad_input(admin, body, code):
    res = admin.post("/v1/pools", json=body)
    assert res.status_code == 422, res.text
    assert error_of(res) == code
    assert admin.get("/v1/pools").json()["pools"] == []  # nothing half-created


def test_add_numbers_and_stats(admin, http, make_pool):
    pool = make_pool(2)
    res = admin.post(f"/v1/pools/{pool['id']}/numbers",
                     json={"numbers": ["+15550100002", "555.010.0003"]})
    assert res.status_code == 200
    assert res.json()["added"] == 2 and len(res.json()["numbers"]) == 4
    for v in ("a", "b", "c"):
        http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": v})
    stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert stats["numbers"] == 4 and stats["active_sessions"] == 3
    assert stats["utilization"] == 0.75
    bad = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": ["nope"]})
    assert bad.status_code == 422 and error_of(bad) == "invalid_number"
    assert admin.get(f"/v1/pools/{pool['id']}/stats").json()["numbers"] == 4


def test_unknown_pool_on_admin_routes(admin):
    for res in (admin.get("/v1/pools/nosuch/stats"), admin.get("/v1/pools/nosuch"),
                admin.post("/v1/pools/nosuch/numbers", json={"numbers": numbers(1)}),
                admin.get("/v1/pools/bad%7Bid/stats")):
        assert res.status_code == 404 and error_of(res) == "pool_not_found"


def test_openapi_document_names_the_contract(http):
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/dni/session", "/v1/dni/heartbeat", "/v1/pools", "/v1/calls",
                 "/v1/pools/{pool_id}/stats", "/healthz", "/readyz", "/snippet.js"):
        assert path in doc["paths"], path
    body = doc["components"]["schemas"]["SessionBody"]
    assert set(body["required"]) == {"pool_id", "visitor_id"}
    assert {"utm_source", "gclid", "fbclid", "msclkid", "landing_page"} <= set(body["properties"])
    assert body["properties"]["visitor_id"]["pattern"] == "^[A-Za-z0-9_.:-]{1,128}$"
    assert doc["paths"]["/v1/pools"]["post"]["responses"].keys() >= {"201", "4XX"}
    status = doc["components"]["schemas"]["SessionResponse"]["properties"]["status"]
    assert status["enum"] == ["new", "reused", "fallback", "unavailable", "excluded"]
    # every route the broker serves is in the document, with its method
    from broker import admin, calls, edge, openapi, snippet, streams
    served = {(m.lower(), route.path) for mod in (edge, admin, calls, streams, snippet, openapi)
              for route in mod.routes for m in route.methods or ()
              if m != "HEAD"} | {("get", "/healthz"), ("get", "/readyz")}
    documented = {(m, path) for path, ops in doc["paths"].items() for m in ops}
    assert served == documented
    from openapi_spec_validator import validate
    validate(doc)  # a valid OpenAPI 3.1 document (raises otherwise)


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0)", "facebookexternalhit/1.1",
    "Mozilla/5.0 (compatible; YandexSpider/3.0)"])
def test_known_bots_are_excluded_and_hold_nothing(http, make_pool, admin, ua):
    pool = make_pool(1)
    res = http.post("/v1/dni/session", headers={"User-Agent": ua},
                    json={"pool_id": pool["id"], "visitor_id": "crawler"})
    assert res.json() == {"status": "excluded", "number": None, "session_id": None,
                          "expires_at": None, "heartbeat_s": 0}
    person = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "p"})
    assert person.json()["status"] == "new"  # the only number was still free
    unknown = http.post("/v1/dni/session", headers={"User-Agent": ua},
                        json={"pool_id": "nosuchpool", "visitor_id": "crawler"})
    assert unknown.status_code == 404 and error_of(unknown) == "pool_not_found"


def raw_exchange(url: str, raw: bytes) -> tuple[list[str], dict[str, str], bytes]:
    """Send bytes on a fresh connection: the status line, headers and body answered."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines, dict(line.lower().split(": ", 1) for line in lines[1:]), body


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/dni/session HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
])
def test_a_request_that_is_not_http_gets_the_error_shape(broker, raw):
    """Requests the HTTP parser rejects before the app sees them: 400 in the contract's
    error shape (JSON, CORS), not the server's plain text."""
    lines, headers, body = raw_exchange(broker.url, raw)
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/json"
    assert headers["access-control-allow-origin"] == "*"
    assert int(headers["content-length"]) == len(body)
    assert orjson.loads(body)["error"]["code"] == "bad_request"


def test_a_websocket_upgrade_is_plain_http(broker):
    """No route speaks WebSocket: an upgrade request is answered as HTTP (here 405 in the
    error shape), not by uvicorn's WebSocket layer with an empty 403."""
    lines, headers, body = raw_exchange(broker.url, (
        b"GET /v1/dni/session HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
    assert lines[0] == "HTTP/1.1 405 Method Not Allowed"
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
