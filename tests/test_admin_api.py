"""Issue 3's admin surface through HTTP against a real `dni serve` and Redis: every
endpoint and error code of pools, numbers, the number index, call flows and buying."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, BrokerProcess, numbers
from tests.fake_twilio import ACCOUNT, TOKEN, FakeTwilio
from tests.test_attribution import wait_for
from tests.test_edge_http import error_of


def _session(http, pool_id: str, visitor: str) -> dict:
    res = http.post("/v1/dni/session", json={"pool_id": pool_id, "visitor_id": visitor})
    assert res.status_code == 200, res.text
    return res.json()


def _beat(http, pool_id: str, visitor: str, sid: str) -> httpx.Response:
    return http.post("/v1/dni/heartbeat", json={"pool_id": pool_id, "visitor_id": visitor,
                                                "session_id": sid})


# -- pools ---------------------------------------------------------------------------------

def test_patch_changes_only_the_fields_given_and_null_clears(admin, make_pool):
    pool = make_pool(2, website_url="https://a.example", call_flow="sales",
                     fallback_number="+15550199999", target_number="+15550199990")
    res = admin.patch(f"/v1/pools/{pool['id']}", json={
        "name": "renamed", "session_ttl_s": 86400, "policy": "lru", "website_url": None,
        "fallback_number": "(555) 019-9998"})
    assert res.status_code == 200, res.text
    got = res.json()
    assert got["name"] == "renamed" and got["session_ttl_s"] == 86400
    assert got["policy"] == "lru" and got["website_url"] is None
    assert got["fallback_number"] == "+15550199998"
    assert got["call_flow"] == "sales" and got["target_number"] == "+15550199990"
    assert got["numbers"] == pool["numbers"]
    assert admin.get(f"/v1/pools/{pool['id']}").json() == got
    assert admin.patch(f"/v1/pools/{pool['id']}", json={}).json() == got


@pytest.mark.parametrize("body,code", [
    ({"session_ttl_s": 0}, "invalid_session_ttl"),
    ({"session_ttl_s": 86401}, "invalid_session_ttl"),
    ({"policy": "fifo"}, "invalid_policy"),
    ({"name": ""}, "invalid_field"),
    ({"name": None}, "invalid_field"),
    ({"fallback_number": "12"}, "invalid_number"),
    ({"target_number": "not a number"}, "invalid_number"),
    ([1], "invalid_body"),
])
def test_patch_rejects_bad_input(admin, make_pool, body, code):
    pool = make_pool(1)
    res = admin.patch(f"/v1/pools/{pool['id']}", json=body)
    assert res.status_code == 422 and error_of(res) == code
    assert admin.get(f"/v1/pools/{pool['id']}").json() == pool


def test_new_session_length_applies_to_new_leases(admin, http, make_pool):
    pool = make_pool(1, session_ttl_s=100)
    admin.patch(f"/v1/pools/{pool['id']}", json={"session_ttl_s": 2000})
    s = _session(http, pool["id"], "v")
    assert s["expires_at"] - time.time() * 1000 > 1900 * 1000


def test_delete_pool_ends_its_sessions_and_frees_its_numbers(admin, http, make_pool, r):
    pool = make_pool(3, fallback_number="+15550199999", target_number="+15550199998")
    a = _session(http, pool["id"], "a")
    admin.post(f"/v1/pools/{pool['id']}/numbers/{a['number']}/deactivate")
    b = _session(http, pool["id"], "b")
    assert admin.delete(f"/v1/pools/{pool['id']}").status_code == 204
    assert not r.keys(f"dni:{{{pool['id']}}}:v:*")  # the sessions are gone with the pool
    assert not r.keys(f"dni:{{{pool['id']}}}:pool") and not r.keys(f"dni:{{{pool['id']}}}:numbers")
    for res in (admin.get(f"/v1/pools/{pool['id']}"), admin.delete(f"/v1/pools/{pool['id']}"),
                _beat(http, pool["id"], "b", b["session_id"]),
                http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "a"})):
        assert res.status_code == 404 and error_of(res) == "pool_not_found"
    assert admin.get("/v1/pools").json() == {"pools": []}
    # what the deletion wrote to the pool's outbox (and whatever the sidecar had not moved
    # yet) still reaches the consumers' stream; then the outbox goes
    def events() -> set[tuple[str, str, str]]:
        return {(f[b"event"].decode(), f[b"session_id"].decode(), f.get(b"reason", b"").decode())
                for _, f in r.xrange("dni:sessions") if f[b"pool_id"].decode() == pool["id"]}

    want = {("session.started", a["session_id"], ""), ("session.started", b["session_id"], ""),
            ("session.ended", a["session_id"], "number_removed"),
            ("session.ended", b["session_id"], "number_removed")}
    wait_for(lambda: events() == want and not r.exists(f"dni:{{{pool['id']}}}:outbox")
             and not r.smembers("dni:pools:draining"), timeout=5)
    # its tracking, target and backup numbers can be used again
    again = admin.post("/v1/pools", json={"name": "again", "numbers": pool["numbers"],
                                          "fallback_number": "+15550199998"})
    assert again.status_code == 201, again.text
    assert again.json()["numbers"] == pool["numbers"]


def test_list_pools(admin, make_pool):
    a, b = make_pool(1, name="a"), make_pool(0, name="b")
    listed = admin.get("/v1/pools").json()["pools"]
    assert sorted(p["id"] for p in listed) == sorted([a["id"], b["id"]])


def test_admin_routes_need_the_token(http, make_pool):
    pool = make_pool(1)
    n = pool["numbers"][0]
    for method, path in [("PATCH", f"/v1/pools/{pool['id']}"),
                         ("DELETE", f"/v1/pools/{pool['id']}"),
                         ("DELETE", f"/v1/pools/{pool['id']}/numbers/{n}"),
                         ("POST", f"/v1/pools/{pool['id']}/numbers/{n}/deactivate"),
                         ("POST", f"/v1/pools/{pool['id']}/numbers/{n}/activate"),
                         ("GET", "/v1/stats")]:
        res = http.request(method, path, json={})
        assert res.status_code == 401 and error_of(res) == "unauthorized", path
        assert res.headers["www-authenticate"].startswith("Bearer "), path
    res = http.post("/v1/calls", json={"to": n, "call_id": "c1"})  # calls take it too
    assert res.status_code == 401 and res.headers["www-authenticate"].startswith("Bearer ")


def test_unknown_pool_on_new_routes(admin):
    n = numbers(1)[0]
    for res in (admin.patch("/v1/pools/nosuch", json={"name": "x"}),
                admin.delete("/v1/pools/nosuch"),
                admin.delete(f"/v1/pools/nosuch/numbers/{n}"),
                admin.post(f"/v1/pools/nosuch/numbers/{n}/deactivate"),
                admin.post(f"/v1/pools/nosuch/numbers/{n}/activate"),
                admin.post("/v1/pools/nosuch/numbers", json={"buy": {"provider": "sandbox", "count": 1}})):
        assert res.status_code == 404 and error_of(res) == "pool_not_found", res.request.url
    # nothing was left claimed by the failed add: the sandbox number is still free
    assert admin.post("/v1/pools", json={"name": "x", "buy": {"provider": "sandbox", "count": 100}}).status_code == 201


def test_bad_json_and_empty_add(admin, make_pool):
    pool = make_pool(1)
    res = admin.patch(f"/v1/pools/{pool['id']}", content=b"{nope",
                      headers={"content-type": "application/json"})
    assert res.status_code == 400 and error_of(res) == "bad_json"
    # invalid UTF-8 inside a JSON string is malformed JSON too, on every JSON endpoint
    latin1 = b'{"name": "caf\xe9", "numbers": ["\xe9"], "to": "\xe9", "call_id": "x"}'
    for method, path in (("POST", "/v1/pools"), ("PATCH", f"/v1/pools/{pool['id']}"),
                         ("POST", f"/v1/pools/{pool['id']}/numbers"), ("POST", "/v1/calls")):
        res = admin.request(method, path, content=latin1,
                            headers={"content-type": "application/json"})
        assert res.status_code == 400 and error_of(res) == "bad_json", (path, res.text)
    res = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": []})
    assert res.status_code == 422 and error_of(res) == "missing_field"


# -- the number index ------------------------------------------------------------------------

def test_a_tracking_number_belongs_to_one_pool(admin, make_pool):
    a = make_pool(2)
    res = admin.post("/v1/pools", json={"name": "b", "numbers": ["555-000-0001"]})
    assert res.status_code == 409 and error_of(res) == "number_in_use"
    assert a["id"] in res.json()["error"]["message"]
    b = make_pool(0, name="b")
    res = admin.post(f"/v1/pools/{b['id']}/numbers",
                     json={"numbers": [numbers(1, 50)[0], a["numbers"][0]]})
    assert res.status_code == 409 and error_of(res) == "number_in_use"
    assert admin.get(f"/v1/pools/{b['id']}").json()["numbers"] == []  # all or none
    # re-adding to its own pool is fine (and keeps its sessions)
    res = admin.post(f"/v1/pools/{a['id']}/numbers", json={"numbers": a["numbers"]})
    assert res.status_code == 200 and res.json()["added"] == 0
    # once removed from its pool it can join another
    assert admin.delete(f"/v1/pools/{a['id']}/numbers/{a['numbers'][0]}").status_code == 204
    res = admin.post(f"/v1/pools/{b['id']}/numbers", json={"numbers": [a["numbers"][0]]})
    assert res.status_code == 200 and res.json()["numbers"] == [a["numbers"][0]]


def test_target_and_backup_numbers_are_never_tracking_numbers(admin, make_pool):
    a = make_pool(2, target_number="+15550199990", fallback_number="+15550199991")
    tracked = a["numbers"][0]
    for field in ("target_number", "fallback_number"):
        res = admin.post("/v1/pools", json={"name": "x", field: tracked})
        assert res.status_code == 409 and error_of(res) == "number_in_use", field
        res = admin.patch(f"/v1/pools/{a['id']}", json={field: a["numbers"][1]})
        assert res.status_code == 409 and error_of(res) == "number_in_use", field
    for fixed in ("+15550199990", "+15550199991"):
        res = admin.post(f"/v1/pools/{a['id']}/numbers", json={"numbers": [fixed]})
        assert res.status_code == 409 and error_of(res) == "number_in_use"
    # another pool may show the same site number, and once no pool names it, it is free
    b = admin.post("/v1/pools", json={"name": "b", "target_number": "+15550199990"})
    assert b.status_code == 201
    admin.patch(f"/v1/pools/{a['id']}", json={"target_number": None})
    res = admin.post(f"/v1/pools/{a['id']}/numbers", json={"numbers": ["+15550199990"]})
    assert res.status_code == 409  # pool b still names it
    admin.delete(f"/v1/pools/{b.json()['id']}")
    res = admin.post(f"/v1/pools/{a['id']}/numbers", json={"numbers": ["+15550199990"]})
    assert res.status_code == 200 and "+15550199990" in res.json()["numbers"]


def test_one_number_as_both_target_and_backup_is_counted_once(admin, make_pool):
    """A pool naming one number as target and backup holds it once in the index: changing
    either field or deleting the pool frees it exactly when no pool names it any more."""
    x, y, z = "+15550199970", "+15550199971", "+15550199972"
    a = make_pool(0, target_number=x, fallback_number=x)
    admin.patch(f"/v1/pools/{a['id']}", json={"target_number": y})  # still names x (backup)
    res = admin.post("/v1/pools", json={"name": "t", "numbers": [x]})
    assert res.status_code == 409 and error_of(res) == "number_in_use"
    assert admin.delete(f"/v1/pools/{a['id']}").status_code == 204
    res = admin.post("/v1/pools", json={"name": "t", "numbers": [x, y]})
    assert res.status_code == 201, res.text  # nothing names them: both free
    # two pools: b names z as target, c as backup then also as target; c goes
    b = make_pool(0, target_number=z)
    c = make_pool(0, target_number="+15550199973", fallback_number=z)
    admin.patch(f"/v1/pools/{c['id']}", json={"target_number": z})
    assert admin.delete(f"/v1/pools/{c['id']}").status_code == 204
    res = admin.post("/v1/pools", json={"name": "t", "numbers": [z]})
    assert res.status_code == 409 and error_of(res) == "number_in_use"  # b still names it
    assert admin.get(f"/v1/pools/{b['id']}").json()["target_number"] == z


def test_pools_sharing_a_backup_number(admin, make_pool):
    """Calls to a backup number several pools name stay `backup_number` of a pool that
    still names it, whichever pool leaves."""
    backup = "+15550197777"
    d = make_pool(1, fallback_number=backup)
    e = make_pool(1, fallback_number=backup)
    assert admin.delete(f"/v1/pools/{e['id']}").status_code == 204
    res = admin.post("/v1/calls", json={"to": backup, "call_id": "CA-shared-1"}).json()
    assert (res["attributed"], res["reason"], res["pool_id"]) == (False, "backup_number", d["id"])
    f = make_pool(1, fallback_number=backup)  # the index now names f
    admin.patch(f"/v1/pools/{f['id']}", json={"fallback_number": None})
    res = admin.post("/v1/calls", json={"to": backup, "call_id": "CA-shared-2"}).json()
    assert (res["reason"], res["pool_id"]) == ("backup_number", d["id"])
    admin.patch(f"/v1/pools/{d['id']}", json={"fallback_number": None})
    res = admin.post("/v1/calls", json={"to": backup, "call_id": "CA-shared-3"}).json()
    assert res["reason"] == "not_a_pool_number"


def test_invalid_numbers_are_422(admin, make_pool):
    pool = make_pool(1)
    for res in (admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": ["123"]}),
                admin.delete(f"/v1/pools/{pool['id']}/numbers/123"),
                admin.post(f"/v1/pools/{pool['id']}/numbers/abc/deactivate")):
        assert res.status_code == 422 and error_of(res) == "invalid_number"


# -- removing, deactivating, reactivating ---------------------------------------------------------

def test_removing_a_number_ends_the_session_holding_it(admin, http, make_pool):
    pool = make_pool(2)
    a = _session(http, pool["id"], "a")
    other = [n for n in pool["numbers"] if n != a["number"]][0]
    res = admin.delete(f"/v1/pools/{pool['id']}/numbers/{a['number']}")
    assert res.status_code == 204
    assert _beat(http, pool["id"], "a", a["session_id"]).json()["status"] == "expired"
    again = _session(http, pool["id"], "a")
    assert again["status"] == "new" and again["number"] == other
    assert admin.get(f"/v1/pools/{pool['id']}").json()["numbers"] == [other]
    res = admin.delete(f"/v1/pools/{pool['id']}/numbers/{a['number']}")
    assert res.status_code == 404 and error_of(res) == "number_not_found"
    # national format in the path works too
    res = admin.delete(f"/v1/pools/{pool['id']}/numbers/(555)%20000-0001")
    assert res.status_code in (204, 404)


def test_deactivated_number_is_never_assigned_but_its_session_goes_on(admin, http, make_pool):
    pool = make_pool(1, session_ttl_s=1)
    n = pool["numbers"][0]
    a = _session(http, pool["id"], "a")
    res = admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/deactivate")
    assert res.status_code == 200
    assert res.json() == {"pool_id": pool["id"], "number": n, "active": False, "changed": True}
    assert admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/deactivate").json()["changed"] is False
    got = admin.get(f"/v1/pools/{pool['id']}").json()
    assert got["numbers"] == [] and got["inactive_numbers"] == [n]
    assert _beat(http, pool["id"], "a", a["session_id"]).json()["status"] == "alive"
    assert _session(http, pool["id"], "a")["status"] == "reused"
    assert _session(http, pool["id"], "b")["status"] == "unavailable"
    time.sleep(1.2)  # a's session ends: the number is released, but stays inactive
    assert _beat(http, pool["id"], "a", a["session_id"]).json()["status"] == "expired"
    assert _session(http, pool["id"], "b")["status"] == "unavailable"
    res = admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/activate")
    assert res.status_code == 200 and res.json()["changed"] is True
    assert admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/activate").json()["changed"] is False
    assert _session(http, pool["id"], "b")["number"] == n


def test_reactivating_a_held_number_keeps_it_held(admin, http, make_pool):
    pool = make_pool(1, session_ttl_s=60)
    n = pool["numbers"][0]
    a = _session(http, pool["id"], "a")
    admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/deactivate")
    hb = _beat(http, pool["id"], "a", a["session_id"]).json()  # extended while inactive
    admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/activate")
    assert _session(http, pool["id"], "b")["status"] == "unavailable"
    stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert stats["active_sessions"] == 1 and stats["available"] == 0
    again = _session(http, pool["id"], "a")
    assert again["status"] == "reused" and again["expires_at"] >= hb["expires_at"]


def test_adding_a_deactivated_number_again_activates_it(admin, http, make_pool):
    """POST numbers adds numbers active: one the pool holds deactivated is activated
    (reported as `reactivated`), and gets assigned again."""
    pool = make_pool(1)
    n = pool["numbers"][0]
    admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/deactivate").raise_for_status()
    assert _session(http, pool["id"], "a")["status"] == "unavailable"
    res = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": [n]})
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["added"], body["reactivated"]) == (0, 1)
    assert body["numbers"] == [n] and body["inactive_numbers"] == []
    assert _session(http, pool["id"], "b")["number"] == n
    again = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": [n]}).json()
    assert (again["added"], again["reactivated"]) == (0, 0)


def test_unknown_number_of_a_pool_is_404(admin, make_pool):
    pool = make_pool(1)
    n = numbers(1, 900)[0]
    for res in (admin.delete(f"/v1/pools/{pool['id']}/numbers/{n}"),
                admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/deactivate"),
                admin.post(f"/v1/pools/{pool['id']}/numbers/{n}/activate")):
        assert res.status_code == 404 and error_of(res) == "number_not_found"


# -- call flows ---------------------------------------------------------------------------------

def test_numbers_take_the_pools_call_flow(admin, make_pool):
    pool = make_pool(2, call_flow="sales-ivr")
    assert pool["call_flows"] == {n: "sales-ivr" for n in pool["numbers"]}
    extra = numbers(2, 100)
    res = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": extra[:1]})
    assert res.json()["call_flows"][extra[0]] == "sales-ivr"
    res = admin.post(f"/v1/pools/{pool['id']}/numbers",
                     json={"numbers": extra[1:], "call_flow": "support"})
    assert res.json()["call_flows"][extra[1]] == "support"
    admin.delete(f"/v1/pools/{pool['id']}/numbers/{extra[1]}")
    assert extra[1] not in admin.get(f"/v1/pools/{pool['id']}").json()["call_flows"]
    plain = make_pool(0, name="plain")
    assert plain["call_flows"] == {}


# -- buying -----------------------------------------------------------------------------------

def test_buy_from_the_sandbox(admin, make_pool):
    res = admin.post("/v1/pools", json={"name": "bought", "call_flow": "sales",
                                        "buy": {"provider": "sandbox", "count": 3,
                                                "area_code": "212"}})
    assert res.status_code == 201, res.text
    pool = res.json()
    assert pool["numbers"] == ["+12125550100", "+12125550101", "+12125550102"]
    assert pool["bought"] == pool["numbers"]
    assert set(pool["call_flows"].values()) == {"sales"}
    res = admin.post(f"/v1/pools/{pool['id']}/numbers",
                     json={"numbers": ["+15550100777"],
                           "buy": {"provider": "sandbox", "count": 1, "area_code": "212",
                                   "contains": "0109"}})
    assert res.status_code == 200, res.text
    assert res.json()["bought"] == ["+12125550109"]
    assert res.json()["added"] == 2
    # not enough: all or none
    res = admin.post(f"/v1/pools/{pool['id']}/numbers",
                     json={"buy": {"provider": "sandbox", "count": 98, "area_code": "212"}})
    assert res.status_code == 409 and error_of(res) == "not_enough_numbers"


def test_buy_request_errors(admin, make_pool):
    pool = make_pool(0)
    for buy, status, code in [
        ({"provider": "twilio", "count": 1}, 422, "provider_not_configured"),
        ({"provider": "nope", "count": 1}, 422, "provider_not_configured"),
        ({"provider": "Sandbox!", "count": 1}, 422, "invalid_provider"),
        ({"provider": "sandbox", "count": 0}, 422, "invalid_count"),
        ({"provider": "sandbox", "count": 101}, 422, "invalid_count"),
        ({"provider": "sandbox", "count": 1, "area_code": "2a2"}, 422, "invalid_area_code"),
        ({"provider": "sandbox", "count": 1, "contains": "x"}, 422, "invalid_pattern"),
        ({"provider": "sandbox", "count": 1, "country": "usa"}, 422, "invalid_country"),
        ({"count": 1}, 422, "missing_field"),
    ]:
        res = admin.post(f"/v1/pools/{pool['id']}/numbers", json={"buy": buy})
        assert (res.status_code, error_of(res)) == (status, code), buy


@pytest.fixture(scope="module")
def twilio():
    fake = FakeTwilio([f"+1415555{i:04d}" for i in range(100, 106)] + ["+12125550150"]).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def twilio_broker(redis_server, twilio):
    b = BrokerProcess(redis_server, env={"DNI_TWILIO_ACCOUNT_SID": ACCOUNT,
                                         "DNI_TWILIO_AUTH_TOKEN": TOKEN,
                                         "DNI_TWILIO_API_URL": twilio.url}).start()
    yield b
    b.stop()


@pytest.fixture
def tadmin(twilio_broker, twilio, r):
    twilio.owned.clear()
    twilio.fail_buying.clear()
    twilio.calls.clear()
    with httpx.Client(base_url=twilio_broker.url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


def test_buy_from_twilio(tadmin, twilio):
    res = tadmin.post("/v1/pools", json={
        "name": "tw", "call_flow": "https://flows.example/voice",
        "buy": {"provider": "twilio", "count": 2, "area_code": "415"}})
    assert res.status_code == 201, res.text
    pool = res.json()
    assert pool["numbers"] == ["+14155550100", "+14155550101"]
    assert sorted(twilio.owned) == pool["numbers"]
    assert all(v["voice_url"] == "https://flows.example/voice" for v in twilio.owned.values())
    search = [c for c in twilio.calls if "AvailablePhoneNumbers/US/Local.json" in c[1]]
    assert search[0][0] == "GET" and search[0][2]["AreaCode"] == "415"
    res = tadmin.post(f"/v1/pools/{pool['id']}/numbers",
                      json={"buy": {"provider": "twilio", "count": 1, "contains": "0150"}})
    assert res.json()["bought"] == ["+12125550150"]
    res = tadmin.post(f"/v1/pools/{pool['id']}/numbers",
                      json={"buy": {"provider": "twilio", "count": 9, "area_code": "415"}})
    assert res.status_code == 409 and error_of(res) == "not_enough_numbers"
    # a number the provider sells that the broker cannot use is given back, not kept
    twilio.inventory.append("+1999555012")  # nine digits: not a valid NANP number
    try:
        res = tadmin.post(f"/v1/pools/{pool['id']}/numbers",
                          json={"buy": {"provider": "twilio", "count": 1, "area_code": "999"}})
        assert res.status_code == 502 and error_of(res) == "provider_error", res.text
        assert "+1999555012" not in twilio.owned
    finally:
        twilio.inventory.remove("+1999555012")


def test_a_failed_twilio_purchase_releases_what_it_bought(tadmin, twilio):
    twilio.fail_buying.add("+14155550102")
    res = tadmin.post("/v1/pools", json={
        "name": "tw", "buy": {"provider": "twilio", "count": 3, "area_code": "415"}})
    assert res.status_code == 502 and error_of(res) == "provider_error"
    assert twilio.owned == {}  # the two bought before the failure were released
    assert any(c[0] == "DELETE" for c in twilio.calls)
    assert tadmin.get("/v1/pools").json() == {"pools": []}


def test_a_purchase_is_released_when_a_number_is_in_use(tadmin, twilio):
    first = tadmin.post("/v1/pools", json={"name": "a", "numbers": ["+14155550100"]}).json()
    assert first["numbers"] == ["+14155550100"]
    # the fake still offers +14155550100 (bought elsewhere): claiming it fails, all released
    res = tadmin.post("/v1/pools", json={
        "name": "b", "buy": {"provider": "twilio", "count": 1, "area_code": "415"}})
    assert res.status_code == 409 and error_of(res) == "number_in_use"
    assert twilio.owned == {}


def test_stats_count_a_session_refreshed_past_its_first_expiry(admin, http, make_pool):
    """Refreshes leave a number's score alone (session-5.lua); stats still count it."""
    pool = make_pool(2, session_ttl_s=1)
    a = _session(http, pool["id"], "a")
    time.sleep(0.7)
    assert _beat(http, pool["id"], "a", a["session_id"]).json()["status"] == "alive"
    time.sleep(0.4)  # past a's first expiry, inside the refreshed one
    stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert stats["active_sessions"] == 1 and stats["available"] == 1
    assert _session(http, pool["id"], "b")["number"] != a["number"]
    time.sleep(1.1)
    stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert stats["active_sessions"] == 0 and stats["available"] == 2
