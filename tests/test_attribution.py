"""Issue 4: session records through the sidecar into dni:sessions, calls and dni:calls."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import httpx
import pytest
import redis

from broker.calls import twilio_signature
from broker.source import IpPolicy, flat, pack
from tests.conftest import ADMIN_TOKEN, BrokerProcess

FULL_SOURCE = {
    "landing_page": "https://shop.example/?utm_source=google&gclid=abc",
    "referrer": "https://www.google.com/",
    "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring",
    "utm_term": "plumber near me", "utm_content": "ad1 <b>bold</b> \"quoted\"",
    "gclid": "EAIaIQ-gclid", "fbclid": "IwAR-fbclid", "msclkid": "ms-clk-id",
}
UA = "Mozilla/5.0 (X11; Linux x86_64) DNI-test"


def entries(r: redis.Redis, stream: str) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in fields.items()} | {"_id": i.decode()}
            for i, fields in r.xrange(stream)]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_session(http, pool_id: str, visitor: str, **fields) -> dict:
    res = http.post("/v1/dni/session", headers={"User-Agent": UA},
                    json={"pool_id": pool_id, "visitor_id": visitor, **fields})
    assert res.status_code == 200, res.text
    return res.json()


def post_call(admin, to: str, call_id: str, **extra) -> dict:
    res = admin.post("/v1/calls", json={"to": to, "from": "+15550177777", "call_id": call_id,
                                        **extra})
    assert res.status_code == 200, res.text
    return res.json()


def test_every_field_round_trips_to_sessions_and_calls(http, admin, make_pool, r):
    pool = make_pool(3)
    s = start_session(http, pool["id"], "visitor-1", **FULL_SOURCE)
    started = wait_for(lambda: [e for e in entries(r, "dni:sessions")
                                if e["event"] == "session.started"])
    (e,) = started
    for name, value in FULL_SOURCE.items():
        assert e[name] == value, name
    assert e["ip"] == "127.0.0.1" and e["user_agent"] == UA
    assert (e["pool_id"], e["visitor_id"], e["session_id"], e["number"]) == (
        pool["id"], "visitor-1", s["session_id"], s["number"])
    assert int(e["expires_at"]) == s["expires_at"] and int(e["started_at"]) <= s["expires_at"]
    assert r.xlen(f"dni:{{{pool['id']}}}:outbox") == 0  # moved, not copied twice

    call = post_call(admin, s["number"], "CA-roundtrip")
    assert call["attributed"] is True and call["match"] == "live"
    assert (call["pool_id"], call["session_id"], call["visitor_id"]) == (
        pool["id"], s["session_id"], "visitor-1")
    assert call["attribution"] == {**FULL_SOURCE, "ip": "127.0.0.1", "user_agent": UA}
    (c,) = entries(r, "dni:calls")
    assert c["event"] == "call.attributed" and c["call_id"] == "CA-roundtrip"
    assert c["to"] == s["number"] and c["from"] == "+15550177777"
    assert c["session_id"] == s["session_id"] and c["visitor_id"] == "visitor-1"
    for name, value in {**FULL_SOURCE, "ip": "127.0.0.1", "user_agent": UA}.items():
        assert c[name] == value, name


def test_user_agents_are_stored_as_valid_utf8_cut_on_a_character(http, make_pool, r):
    """A user agent over 512 characters is cut between characters (here a 2-byte one
    straddles byte 512), bytes that are not UTF-8 are replaced, and the sidecar copies
    both sessions and every later one."""
    pool = make_pool(3)
    long_ua = "Mozilla/5.0 " + "a" * 499 + "\u00d1" + "tail"
    cases = {"long": long_ua.encode(), "raw": b"Mozilla/5.0 \xff\xfe broken"}
    sids = {}
    for visitor, ua in cases.items():
        res = http.post("/v1/dni/session", headers={"User-Agent": ua},
                        json={"pool_id": pool["id"], "visitor_id": visitor})
        assert res.status_code == 200 and res.json()["status"] == "new", res.text
        sids[res.json()["session_id"]] = visitor
    after = start_session(http, pool["id"], "after")  # copied after the two above

    def copied() -> dict[str, dict]:
        return {e["session_id"]: e for e in entries(r, "dni:sessions")
                if e["event"] == "session.started" and e["pool_id"] == pool["id"]}

    wait_for(lambda: len(copied()) == 3)
    started = copied()
    uas = {sids.get(sid, "after"): e["user_agent"] for sid, e in started.items()}
    assert uas["long"] == long_ua[:512] and uas["long"].endswith("a\u00d1")
    assert uas["raw"] == "Mozilla/5.0 \ufffd\ufffd broken"
    assert uas["after"] == UA and after["session_id"] in started


def test_the_landing_page_is_kept_without_its_fragment(http, admin, make_pool, r):
    """A #fragment (a magic link's token, say) is not stored, streamed or answered."""
    pool = make_pool(2)
    page = "https://shop.example/welcome?utm_source=mail#access_token=s3cret&x=1"
    s = start_session(http, pool["id"], "v-frag", landing_page=page)
    call = post_call(admin, s["number"], "CA-frag")
    assert call["attribution"]["landing_page"] == "https://shop.example/welcome?utm_source=mail"
    (e,) = wait_for(lambda: [e for e in entries(r, "dni:sessions") if e["event"] ==
                             "session.started" and e["pool_id"] == pool["id"]])
    assert e["landing_page"] == "https://shop.example/welcome?utm_source=mail"
    assert "s3cret" not in str(entries(r, "dni:calls"))


def test_returning_visitor_keeps_first_touch(http, admin, make_pool, r):
    pool = make_pool(2)
    s = start_session(http, pool["id"], "v", utm_source="google")
    again = start_session(http, pool["id"], "v", utm_source="bing", gclid="other")
    assert again["status"] == "reused"
    call = post_call(admin, s["number"], "CA-first-touch")
    assert call["attribution"]["utm_source"] == "google" and "gclid" not in call["attribution"]


def test_call_in_grace_period_then_after_reassignment(http, admin, make_pool, r):
    pool = make_pool(1, session_ttl_s=1)
    a = start_session(http, pool["id"], "a", utm_campaign="first")
    time.sleep(max(0.0, a["expires_at"] / 1000 - time.time()) + 0.1)
    grace = post_call(admin, a["number"], "CA-grace")
    assert grace["attributed"] is True and grace["match"] == "grace"
    assert grace["session_id"] == a["session_id"]
    b = start_session(http, pool["id"], "b", utm_campaign="second")
    assert b["status"] == "new" and b["number"] == a["number"]
    after = post_call(admin, a["number"], "CA-after")
    assert after["session_id"] == b["session_id"] and after["match"] == "live"
    assert after["attribution"]["utm_campaign"] == "second"
    # long after the session ended, past the grace period: nobody gets the call
    late = post_call(admin, a["number"], "CA-late", at=b["expires_at"] + 3600_000)
    assert late == {**late, "attributed": False, "reason": "no_session", "pool_id": pool["id"]}


def test_unattributed_calls_give_their_reason(http, admin, make_pool, r):
    pool = make_pool(2, fallback_number="+15550199990")
    unknown = post_call(admin, "+15550155555", "CA-unknown")
    assert unknown["attributed"] is False and unknown["reason"] == "not_a_pool_number"
    backup = post_call(admin, "+15550199990", "CA-backup")
    assert backup["reason"] == "backup_number" and backup["pool_id"] == pool["id"]
    idle = post_call(admin, pool["numbers"][0], "CA-idle")  # never leased
    assert idle["reason"] == "no_session" and idle["pool_id"] == pool["id"]
    admin.post(f"/v1/pools/{pool['id']}/numbers/{pool['numbers'][1]}/deactivate")
    inactive = post_call(admin, pool["numbers"][1], "CA-inactive")  # still the pool's
    assert inactive["reason"] == "no_session" and inactive["pool_id"] == pool["id"]
    # a call without `at` is timed to the millisecond, whatever its reason
    before = int(time.time() * 1000)
    timed = post_call(admin, "+15550155556", "CA-timed")
    assert before - 5 <= timed["at"] <= int(time.time() * 1000) + 5
    events = {e["call_id"]: e for e in entries(r, "dni:calls")}
    assert {e["event"] for e in events.values()} == {"call.unattributed"}
    assert events["CA-backup"]["reason"] == "backup_number"


def test_a_caller_id_that_is_no_number_is_null_and_kept_raw(admin, r):
    """Responses and stream entries carry E.164 numbers only: an anonymous or odd caller
    id answers `from: null` (stream: empty) and is kept as `from_raw`."""
    for call_id, given in (("CA-anon", "Anonymous"), ("CA-odd", "266696687"),
                           ("CA-nat", "(555) 017-7777")):
        res = admin.post("/v1/calls", json={"to": "+15550155555", "from": given,
                                            "call_id": call_id})
        assert res.status_code == 200, res.text
        if call_id == "CA-nat":
            assert res.json()["from"] == "+15550177777" and "from_raw" not in res.json()
        else:
            assert res.json()["from"] is None and res.json()["from_raw"] == given
    events = {e["call_id"]: e for e in entries(r, "dni:calls")}
    assert (events["CA-anon"]["from"], events["CA-anon"]["from_raw"]) == ("", "Anonymous")
    assert events["CA-nat"]["from"] == "+15550177777" and "from_raw" not in events["CA-nat"]


@pytest.mark.parametrize("at", [-1, 18446744073709551615, 9223372036854775807,
                                253402300800000, "1764210000000", 1.5])
def test_a_call_time_out_of_range_is_422(admin, at):
    res = admin.post("/v1/calls", json={"to": "+15550155555", "call_id": "CA-at", "at": at})
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_at", res.text


@pytest.mark.parametrize("call_id", ["", "x" * 129])
def test_a_call_id_out_of_length_is_422(admin, call_id):
    res = admin.post("/v1/calls", json={"to": "+15550155555", "call_id": call_id})
    assert res.status_code == 422 and res.json()["error"]["code"] == "invalid_call_id", res.text
    form = admin.post("/v1/calls", data={"To": "+15550155555", "CallSid": "x" * 129})
    assert form.status_code == 422 and form.json()["error"]["code"] == "invalid_call_id"


def test_repeated_call_id_gives_one_entry_and_the_same_answer(http, admin, make_pool, r):
    pool = make_pool(1)
    s = start_session(http, pool["id"], "v")
    first = post_call(admin, s["number"], "CA-twice")
    second = post_call(admin, s["number"], "CA-twice")
    assert first == second
    assert [e["call_id"] for e in entries(r, "dni:calls")] == ["CA-twice"]


def test_calls_need_the_token_and_valid_bodies(http, admin):
    assert http.post("/v1/calls", json={"to": "+15550100000", "call_id": "x"}).status_code == 401
    bad = admin.post("/v1/calls", json={"to": "nope", "call_id": "x"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_number"
    missing = admin.post("/v1/calls", json={"to": "+15550100000"})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "missing_field"


def test_session_ended_carries_duration_and_heartbeats(http, make_pool, r):
    pool = make_pool(1, session_ttl_s=1)
    s = start_session(http, pool["id"], "v")
    for _ in range(2):
        hb = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "v",
                                                  "session_id": s["session_id"]})
        assert hb.json()["status"] == "alive"
    ended = wait_for(lambda: [e for e in entries(r, "dni:sessions")
                              if e["event"] == "session.ended"], timeout=5)
    (e,) = ended
    assert e["session_id"] == s["session_id"] and e["heartbeats"] == "2"
    assert int(e["ended_at"]) - int(e["started_at"]) == int(e["duration_ms"]) >= 1000


def test_removing_a_held_number_reports_the_session_end(http, admin, make_pool, r):
    pool = make_pool(2, fallback_number="+15550199991")
    s = start_session(http, pool["id"], "v")
    res = admin.delete(f"/v1/pools/{pool['id']}/numbers/{s['number']}")
    assert res.status_code == 204
    ended = wait_for(lambda: [e for e in entries(r, "dni:sessions")
                              if e["event"] == "session.ended"], timeout=5)
    assert ended[0]["session_id"] == s["session_id"] and ended[0]["reason"] == "number_removed"
    # the backup index follows the pool's settings
    admin.patch(f"/v1/pools/{pool['id']}", json={"fallback_number": "+15550199992"})
    assert post_call(admin, "+15550199991", "CA-old-backup")["reason"] == "not_a_pool_number"
    assert post_call(admin, "+15550199992", "CA-new-backup")["reason"] == "backup_number"


# ---------------------------------------------------------------- Twilio signatures

def test_twilio_documented_example():
    """The worked example of Twilio's webhook security documentation."""
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234",
              "From": "+14158675310", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert twilio_signature("54321", url, params) != "GvWf1cFY/Q7PnoempGyD5oXAezc="
    assert twilio_signature("12345", url, {**params, "Digits": "9999"}) != \
        "GvWf1cFY/Q7PnoempGyD5oXAezc="


@pytest.fixture(scope="module")
def twilio_broker(redis_server):
    b = BrokerProcess(redis_server, env={"DNI_TWILIO_AUTH_TOKEN": "12345",
                                         "DNI_PUBLIC_URL": "https://mycompany.com"}).start()
    yield b
    b.stop()


def test_twilio_signatures_without_a_public_url_are_warned_about(redis_server, twilio_broker):
    """Without DNI_PUBLIC_URL the signed URL comes from the request's Host header, which
    the sender chooses: the broker says so at start-up (and not when it is set)."""
    b = BrokerProcess(redis_server, env={"DNI_TWILIO_AUTH_TOKEN": "12345"}).start()
    b.stop()
    assert "DNI_TWILIO_AUTH_TOKEN is set without DNI_PUBLIC_URL" in b.log()
    assert "without DNI_PUBLIC_URL" not in twilio_broker.log()


@pytest.mark.parametrize("case", ["valid", "wrong_token", "changed_param", "missing_header"])
def test_twilio_webhook_signature(twilio_broker, r, case):
    with httpx.Client(base_url=twilio_broker.url,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        pool = admin.post("/v1/pools", json={"name": "tw", "numbers": ["+15550100001"]}).json()
    params = {"CallSid": f"CA{case}", "From": "+14158675310", "To": "+15550100001",
              "AccountSid": "AC123", "CallStatus": "ringing", "Direction": "inbound"}
    url = "https://mycompany.com/v1/calls?foo=1&bar=2"
    token = "54321" if case == "wrong_token" else "12345"
    headers = {"content-type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": twilio_signature(token, url, params)}
    body = dict(params)
    if case == "changed_param":
        body["From"] = "+14158675311"
    if case == "missing_header":
        del headers["X-Twilio-Signature"]
    res = httpx.post(twilio_broker.url + "/v1/calls?foo=1&bar=2", headers=headers,
                     content=urlencode(body))
    if case == "valid":
        assert res.status_code == 200, res.text
        assert res.json()["call_id"] == "CAvalid" and res.json()["pool_id"] == pool["id"]
        assert res.json()["reason"] == "no_session"
    else:
        assert res.status_code == 403 and res.json()["error"]["code"] == "bad_signature"
        assert not r.exists("dni:calls")


# ---------------------------------------------------------------- privacy

def test_ip_policies():
    assert IpPolicy("full").apply("203.0.113.77") == "203.0.113.77"
    assert IpPolicy("truncate").apply("203.0.113.77") == "203.0.113.0"
    assert IpPolicy("truncate").apply("2001:db8:1234:5678::1") == "2001:db8:1234::"
    hashed = IpPolicy("hash", "secret").apply("203.0.113.77")
    assert hashed.startswith("h:") and "203" not in hashed
    assert hashed == IpPolicy("hash", "secret").apply("203.0.113.77")
    assert hashed != IpPolicy("hash", "other").apply("203.0.113.77")
    with pytest.raises(ValueError):
        IpPolicy("hash")


def test_truncated_ip_is_what_is_stored(redis_server, r):
    b = BrokerProcess(redis_server, env={"DNI_IP_MODE": "truncate",
                                         "DNI_TRUSTED_PROXIES": "127.0.0.1"}).start()
    try:
        with httpx.Client(base_url=b.url,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
            pool = admin.post("/v1/pools", json={"name": "p", "numbers": ["+15550100001"]}).json()
            s = httpx.post(b.url + "/v1/dni/session", headers={"X-Forwarded-For": "198.51.100.23"},
                           json={"pool_id": pool["id"], "visitor_id": "v"}).json()
            call = admin.post("/v1/calls", json={"to": s["number"], "call_id": "CA-ip"}).json()
        assert call["attribution"]["ip"] == "198.51.100.0"
    finally:
        b.stop()


def test_source_packing_round_trips():
    packed = pack("203.0.113.9", b"UA/1", b'{"utm_source":"a\\nb"}')
    assert flat(packed) == {"ip": "203.0.113.9", "user_agent": "UA/1", "utm_source": "a\nb"}
    assert flat(b"\n\n{}") == {}
