"""The tracking snippet in headless Chromium, against a real broker and Redis (issue 5).

Each test is one or more fresh visitors (new browser contexts) on fixture pages served by
the test's own web server; a test fails if any page raised an uncaught error.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Iterator

import httpx
import pytest
import redis

from broker.source import flat
from tests.browser.conftest import TARGET, Browser, Site, tag
from tests.conftest import ADMIN_TOKEN, BrokerProcess, free_port

from playwright.sync_api import expect  # noqa: E402  (importorskip ran in conftest)

pytestmark = pytest.mark.browser

# The site's number in every common format, and how each must read after the swap to
# +15550100007 (same format, national digits replaced).
FORMATS = ["(555) 010-0000", "555-010-0000", "555.010.0000", "555 010 0000", "5550100000",
           "+1 555 010 0000", "1-555-010-0000", "+15550100000"]
NUMBER = "+15550100007"


def swapped(fmt: str, last: str = "7") -> str:
    return fmt[:-1] + last


def vkey(pool_id: str, visitor_id: str) -> str:
    return f"dni:{{{pool_id}}}:v:{visitor_id}"


def stored_source(r: redis.Redis, pool_id: str, visitor_id: str) -> dict:
    """The source the broker keeps for the visitor's live session (see session-5.lua)."""
    number = r.hget(vkey(pool_id, visitor_id), "n").decode()
    return flat(r.hget(f"dni:{{{pool_id}}}:holders", "a:" + number))


def heartbeats(r: redis.Redis, pool_id: str, visitor_id: str) -> int:
    """The heartbeats of the visitor's live session (its record counts them)."""
    return int(r.hget(vkey(pool_id, visitor_id), "h") or 0)


def sessions_started(r: redis.Redis, pool_id: str) -> int:
    """session.started records of the pool, in its outbox or already moved by the sidecar."""
    pending = r.xrange(f"dni:{{{pool_id}}}:outbox")
    moved = r.xrange("dni:sessions")
    return sum(1 for _, f in pending + moved if f[b"event"] == b"session.started"
               and f[b"pool_id"] == pool_id.encode())


def visitor_id(b: Browser) -> str:
    return next(c["value"] for c in b.context.cookies() if c["name"] == "dni_vid")


def js(broker: BrokerProcess) -> str:
    return broker.url + "/snippet.js"


@pytest.fixture
def pool(make_pool: Callable[..., dict]) -> dict:
    """A pool for the site's number with exactly one tracking number, +15550100007."""
    return make_pool(target_number=TARGET, numbers=[NUMBER])


def test_every_format_links_and_noswap(broker: BrokerProcess, pool: dict, fresh_site: Site,
                                       visitor: Browser) -> None:
    items = "".join(f"<li id='f{i}'>Call {f} now</li>" for i, f in enumerate(FORMATS))
    body = f"""
      <ul>{items}</ul>
      <p id="multi">555-010-0000 or <b>us</b> at 555.010.0000, or (555) 010-0000!</p>
      <a id="tel" href="tel:+15550100000">(555) 010-0000</a>
      <a id="tel2" href="tel:555-010-0000">call</a>
      <a id="tel3" href="TEL:+1-555-010-0000">call</a>
      <a id="sms" href="sms:+15550100000?body=Hi%20there">text us</a>
      <div id="keep" data-dni-noswap>(555) 010-0000 <span id="keep2">555-010-0000</span>
        <a id="keep3" href="tel:+15550100000">+1 555 010 0000</a></div>
      <p id="other">(555) 010-0001, 155501000001, order 95550100000, 555-010-00000</p>
      <textarea id="ta">555-010-0000</textarea>
      <input id="inp" value="555-010-0000">
      <div id="ce" contenteditable>my number is 555-010-0000 <b id="ce2">555-010-0000</b></div>
      <p id="nbh">555&#8209;010&#8209;0000</p><p id="dash">+1&nbsp;555&ndash;010&ndash;0000</p>
    """
    page = visitor.new_page()
    page.goto(fresh_site.page("/formats", body, tag(js(broker), pool["id"])))

    for i, f in enumerate(FORMATS):
        expect(page.locator(f"#f{i}")).to_have_text(f"Call {swapped(f)} now")
    expect(page.locator("#multi")).to_have_text(
        "555-010-0007 or us at 555.010.0007, or (555) 010-0007!")
    expect(page.locator("#tel")).to_have_text("(555) 010-0007")
    expect(page.locator("#tel")).to_have_attribute("href", "tel:+15550100007")
    expect(page.locator("#tel2")).to_have_attribute("href", "tel:555-010-0007")
    expect(page.locator("#tel3")).to_have_attribute("href", "TEL:+1-555-010-0007")
    expect(page.locator("#sms")).to_have_attribute("href", "sms:+15550100007?body=Hi%20there")
    # Untouched: marked elements and their children, other numbers, form fields.
    expect(page.locator("#keep2")).to_have_text("555-010-0000")
    assert page.locator("#keep").inner_text().startswith("(555) 010-0000")
    expect(page.locator("#keep3")).to_have_text("+1 555 010 0000")
    expect(page.locator("#keep3")).to_have_attribute("href", "tel:+15550100000")
    expect(page.locator("#other")).to_have_text(
        "(555) 010-0001, 155501000001, order 95550100000, 555-010-00000")
    expect(page.locator("#ta")).to_have_value("555-010-0000")
    expect(page.locator("#inp")).to_have_value("555-010-0000")
    # what the visitor types (contenteditable) is theirs, down to nested elements
    expect(page.locator("#ce")).to_have_text("my number is 555-010-0000 555-010-0000")
    # non-breaking hyphens and dashes are separators too
    expect(page.locator("#nbh")).to_have_text("555\u2011010\u20110007")
    expect(page.locator("#dash")).to_have_text("+1\u00a0555\u2013010\u20130007")
    # One config answer, one session for the whole page.
    assert len(visitor.posts("/v1/dni/session")) == 1


def test_content_added_later_and_history_navigation(broker: BrokerProcess, pool: dict,
                                                    fresh_site: Site, visitor: Browser) -> None:
    body = """
      <p id="static">no number yet</p><div id="later"></div>
      <script>
        setTimeout(function () {
          var p = document.createElement("p");
          p.id = "added";
          p.textContent = "Call (555) 010-0000";
          document.getElementById("later").append(p);
        }, 700);
      </script>
    """
    page = visitor.new_page()
    page.goto(fresh_site.page("/spa", body, tag(js(broker), pool["id"])))
    page.wait_for_timeout(300)
    assert visitor.posts("/v1/dni/session") == []  # no number on the page: no session
    expect(page.locator("#added")).to_have_text("Call (555) 010-0007")

    # A text node whose data changes; a subtree added in one go; a client-side route.
    page.evaluate("""() => {
      document.getElementById("static").firstChild.data = "now 555.010.0000";
      const div = document.createElement("div");
      div.innerHTML = '<section id="lazy"><p>Sales: +1 555 010 0000</p>' +
                      '<a id="lazylink" href="tel:5550100000">5550100000</a></section>';
      document.body.append(div);
      history.pushState({}, "", "/spa/contact");
      document.getElementById("later").innerHTML = '<h2 id="route">Contact 555 010 0000</h2>';
    }""")
    expect(page.locator("#static")).to_have_text("now 555.010.0007")
    expect(page.locator("#lazy p")).to_have_text("Sales: +1 555 010 0007")
    expect(page.locator("#lazylink")).to_have_text("5550100007")
    expect(page.locator("#lazylink")).to_have_attribute("href", "tel:5550100007")
    expect(page.locator("#route")).to_have_text("Contact 555 010 0007")
    # The manual re-swap exists and is harmless.
    page.evaluate("window.dni.swap()")
    expect(page.locator("#route")).to_have_text("Contact 555 010 0007")
    assert len(visitor.posts("/v1/dni/session")) == 1


def test_second_page_keeps_number_and_first_source(broker: BrokerProcess,
                                                   make_pool: Callable[..., dict],
                                                   fresh_site: Site, visitor: Browser,
                                                   r: redis.Redis) -> None:
    pool = make_pool(target_number=TARGET, numbers=["+15550100007", "+15550100008",
                                                    "+15550100009"])
    head = tag(js(broker), pool["id"])
    body = '<p id="n">Call 555-010-0000</p><a id="next" href="{next}">next</a>'
    landing = fresh_site.page("/one", body.format(next="/two"), head) + (
        "?utm_source=google&utm_medium=cpc&utm_campaign=spring&utm_term=plumber"
        "&utm_content=ad1&gclid=abc123")
    fresh_site.page("/two", body.format(next="/three"), head)
    fresh_site.page("/three", body.format(next="/one"), head)

    page = visitor.new_page()
    page.goto(landing, referer="http://search.example/?q=plumber")
    expect(page.locator("#n")).not_to_have_text("Call 555-010-0000")
    first = page.locator("#n").inner_text()
    page.click("#next")
    page.wait_for_url("**/two")
    page.wait_for_function("() => document.getElementById('n').textContent != 'Call 555-010-0000'")
    assert page.locator("#n").inner_text() == first

    one, two = visitor.posts("/v1/dni/session", 2)
    assert one["utm_source"] == "google" and one["gclid"] == "abc123"
    assert one["referrer"].startswith("http://search.example/")
    assert two == one  # page two reports page one's source, and the same visitor
    vid = visitor_id(visitor)
    assert one["visitor_id"] == vid

    stored = stored_source(r, pool["id"], vid)
    assert stored["utm_source"] == "google" and stored["utm_campaign"] == "spring"
    assert stored["landing_page"] == landing
    assert sessions_started(r, pool["id"]) == 1  # one session for both pages

    # The session ends; the next page of the same visit starts a new one with the same source.
    r.delete(vkey(pool["id"], vid))
    page.click("#next")
    page.wait_for_url("**/three")
    page.wait_for_function("() => document.getElementById('n').textContent != 'Call 555-010-0000'")
    stored = stored_source(r, pool["id"], vid)
    assert stored["utm_source"] == "google" and stored["landing_page"] == landing
    assert sessions_started(r, pool["id"]) == 2


def test_tabs_of_one_visitor_share_one_session(broker: BrokerProcess,
                                               make_pool: Callable[..., dict],
                                               fresh_site: Site, visitor: Browser,
                                               r: redis.Redis) -> None:
    pool = make_pool(target_number=TARGET, numbers=[f"+155501000{i:02d}" for i in range(1, 9)])
    url = fresh_site.page("/tabs", '<p id="n">555-010-0000</p>', tag(js(broker), pool["id"]))
    tabs = [visitor.new_page() for _ in range(3)]
    tabs[0].goto(url)
    expect(tabs[0].locator("#n")).not_to_have_text("555-010-0000")
    shown = tabs[0].locator("#n").inner_text()
    for tab in tabs[1:]:
        tab.goto(url)
        expect(tab.locator("#n")).to_have_text(shown)
    assert len(list(r.scan_iter(f"dni:{{{pool['id']}}}:v:*"))) == 1
    assert {b["visitor_id"] for b in visitor.posts("/v1/dni/session")} == {visitor_id(visitor)}


@pytest.fixture(scope="module")
def broker5(redis_server: str) -> Iterator[BrokerProcess]:
    """A second `dni serve` on the same Redis whose heartbeat interval is 5 s (its minimum)."""
    b = BrokerProcess(redis_server, env={"DNI_HEARTBEAT_S": "5"}).start()
    yield b
    b.stop()


def test_heartbeats_follow_the_broker_interval(broker5: BrokerProcess, pool: dict,
                                               fresh_site: Site, visitor: Browser,
                                               r: redis.Redis) -> None:
    page = visitor.new_page()
    page.goto(fresh_site.page("/beat", '<p id="n">555-010-0000</p>',
                              tag(js(broker5), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    vid = visitor_id(visitor)
    started = time.monotonic()
    deadline = started + 9
    while time.monotonic() < deadline and heartbeats(r, pool["id"], vid) < 1:
        time.sleep(0.2)
    assert heartbeats(r, pool["id"], vid) >= 1, "no heartbeat reached the broker"
    assert time.monotonic() - started > 3  # at the broker's 5 s, not sooner
    expect(page.locator("#n")).to_have_text("555-010-0007")


def test_expired_session_gets_a_new_number(broker: BrokerProcess,
                                           make_pool: Callable[..., dict], fresh_site: Site,
                                           visitor: Browser, r: redis.Redis) -> None:
    pool = make_pool(target_number=TARGET, numbers=["+15550100007", "+15550100008"])
    page = visitor.new_page()
    page.goto(fresh_site.page("/expire", '<p id="n">(555) 010-0000</p><a id="a" '
                              'href="tel:+15550100000">call</a>',
                              tag(js(broker), pool["id"], heartbeat="1")))
    expect(page.locator("#n")).not_to_have_text("(555) 010-0000")
    first = page.locator("#n").inner_text()
    # The session ends behind the page's back; the old number stays leased, so the next
    # session must get the other one.
    r.delete(vkey(pool["id"], visitor_id(visitor)))
    expect(page.locator("#n")).not_to_have_text(first, timeout=5000)
    second = page.locator("#n").inner_text()
    assert {first, second} == {"(555) 010-0007", "(555) 010-0008"}
    expect(page.locator("#a")).to_have_attribute("href", "tel:+1" + "".join(
        c for c in second if c.isdigit()))
    assert len(visitor.posts("/v1/dni/session", 2)) == 2


def test_fallback_number_is_shown(broker: BrokerProcess, make_pool: Callable[..., dict],
                                  fresh_site: Site, visitor: Browser) -> None:
    pool = make_pool(target_number=TARGET, numbers=[], fallback_number="+15550100009")
    page = visitor.new_page()
    page.goto(fresh_site.page("/fallback", '<p id="n">(555) 010-0000</p>',
                              tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("(555) 010-0009")


def test_after_a_fallback_the_snippet_asks_again(broker: BrokerProcess,
                                                 make_pool: Callable[..., dict],
                                                 fresh_site: Site, visitor: Browser) -> None:
    """The pool was full when the page loaded: the visitor sees the backup number, then a
    tracking number once one is free (asked again every heartbeat interval)."""
    pool = make_pool(target_number=TARGET, numbers=[NUMBER], session_ttl_s=3,
                     fallback_number="+15550100009")
    other = httpx.post(broker.url + "/v1/dni/session",
                       json={"pool_id": pool["id"], "visitor_id": "someone-else"}).json()
    assert other["status"] == "new"
    page = visitor.new_page()
    page.goto(fresh_site.page("/full", '<p id="n">(555) 010-0000</p>',
                              tag(js(broker), pool["id"], heartbeat="1")))
    expect(page.locator("#n")).to_have_text("(555) 010-0009")
    expect(page.locator("#n")).to_have_text("(555) 010-0007", timeout=8000)
    assert len(visitor.posts("/v1/dni/session", 2)) >= 2


def test_pools_are_independent(broker: BrokerProcess, make_pool: Callable[..., dict],
                               fresh_site: Site, visitor: Browser) -> None:
    sales = make_pool(target_number=TARGET, numbers=["+15550100007"])
    support = make_pool(target_number="+15550200000", numbers=["+15550200005"])
    body = '<p id="a">Sales 555-010-0000</p><p id="b">Support 555-020-0000</p>'
    page = visitor.new_page()
    page.goto(fresh_site.page("/two-pools", body,
                              tag(js(broker), f"{sales['id']}, {support['id']}, nosuchpool")))
    expect(page.locator("#a")).to_have_text("Sales 555-010-0007")
    expect(page.locator("#b")).to_have_text("Support 555-020-0005")


FAIL_MODES = ["slow", "error", "reset", "garbage", "slowconfig", "status:excluded",
              "status:unavailable", "down"]


def test_fails_open(fresh_site: Site, new_visitor: Callable[[], Browser]) -> None:
    """Broker slow, failing, unreachable or declining: the page keeps its own number."""
    fresh_site.config = {"pools": {"p1": {"target_number": TARGET, "country_code": 1,
                                          "heartbeat_s": 60}}}
    fresh_site.number = NUMBER  # what a late or declining answer would carry
    body = '<p id="n">(555) 010-0000</p><a id="a" href="tel:+15550100000">call</a>'
    pages = {}
    started = time.monotonic()
    for mode in FAIL_MODES:
        if mode == "down":
            src = f"http://127.0.0.1:{free_port()}/snippet.js"
        else:
            src = f"{fresh_site.url}/fake/{mode}/snippet.js"
        page = new_visitor().new_page()
        page.goto(fresh_site.page(f"/fail/{mode}", body, tag(src, "p1", hide="500")),
                  wait_until="domcontentloaded")
        pages[mode] = page
    time.sleep(max(0.0, 3.6 - (time.monotonic() - started)))  # past the slow answers
    for mode, page in pages.items():
        assert page.locator("#n").inner_text() == "(555) 010-0000", mode
        assert page.locator("#a").get_attribute("href") == "tel:+15550100000", mode
        assert page.evaluate("getComputedStyle(document.getElementById('n')).visibility") == \
            "visible", mode
    asked = {path.split("/")[2] for method, path, _ in fresh_site.requests
             if method == "POST" and path.endswith("/v1/dni/session")}
    assert asked == {m for m in FAIL_MODES if m not in ("slowconfig", "down")}


def test_anti_flicker_hides_for_at_most_the_cap(broker: BrokerProcess, pool: dict,
                                                fresh_site: Site,
                                                new_visitor: Callable[[], Browser]) -> None:
    # Samples the number's visibility every 20 ms. (Before the config answer arrives the
    # snippet cannot know which text to hide: the cap governs the wait for the session.)
    recorder = """
      window.__vis = [];
      setInterval(() => {
        const el = document.getElementById("n");
        if (el) window.__vis.push([performance.now(), getComputedStyle(el).visibility,
                                   el.textContent]);
      }, 20);
    """
    fresh_site.config = {"pools": {"p1": {"target_number": TARGET, "country_code": 1}}}
    fresh_site.number = NUMBER
    body = '<p id="n">(555) 010-0000</p>'

    # The broker hangs: the number is hidden at most ~1 s, then shown as it is.
    slow = new_visitor().new_page()
    slow.add_init_script(recorder)
    slow.goto(fresh_site.page("/hide/slow", body, tag(f"{fresh_site.url}/fake/slow/snippet.js",
                                                      "p1", hide="1000", timeout="2500")))
    slow.wait_for_timeout(3200)
    vis = slow.evaluate("window.__vis")
    hidden = [t for t, v, _ in vis if v == "hidden"]
    assert hidden, "the number was never hidden"
    assert hidden[-1] - hidden[0] < 1200
    assert vis[-1][1:] == ["visible", "(555) 010-0000"]

    # The broker answers: hidden until swapped, then shown swapped.
    fast = new_visitor().new_page()
    fast.add_init_script(recorder)
    fast.goto(fresh_site.page("/hide/real", body, tag(js(broker), pool["id"], hide="1000")))
    expect(fast.locator("#n")).to_have_text("(555) 010-0007")
    assert fast.evaluate("getComputedStyle(document.getElementById('n')).visibility") == \
        "visible"


def storage(page: object) -> tuple[str | None, list[str]]:
    return (page.evaluate("localStorage.getItem('dni')"),  # type: ignore[attr-defined]
            [c["name"] for c in page.context.cookies()])  # type: ignore[attr-defined]


def test_consent_wait_does_nothing_until_consent(broker: BrokerProcess, pool: dict,
                                                 fresh_site: Site, visitor: Browser) -> None:
    page = visitor.new_page()
    page.goto(fresh_site.page("/consent-wait", '<p id="n">555-010-0000</p>',
                              tag(js(broker), pool["id"], consent="wait")))
    page.wait_for_timeout(800)
    assert page.locator("#n").inner_text() == "555-010-0000"
    assert storage(page) == (None, [])
    assert [u for _, u, _ in visitor.requests if u.startswith(broker.url + "/v1/")] == []
    page.evaluate("window.dni.consent()")
    expect(page.locator("#n")).to_have_text("555-010-0007")
    stored, cookies = storage(page)
    assert stored and "dni_vid" in cookies


def test_revoke_forgets_the_visitor(broker: BrokerProcess, make_pool: Callable[..., dict],
                                    fresh_site: Site, visitor: Browser) -> None:
    pool = make_pool(target_number=TARGET, numbers=["+15550100007", "+15550100008"])
    url = fresh_site.page("/revoke", '<p id="n">555-010-0000</p>',
                          tag(js(broker), pool["id"], consent="page"))
    page = visitor.new_page()
    page.goto(url)
    expect(page.locator("#n")).not_to_have_text("555-010-0000")
    first = page.locator("#n").inner_text()
    page.evaluate("window.dni.consent()")
    page.wait_for_function("() => localStorage.getItem('dni')")
    assert "dni_vid" in storage(page)[1]
    page.evaluate("window.dni.revoke()")
    assert storage(page) == (None, [])
    page.evaluate("history.pushState({}, '', '?after=revoke')")  # a rescan stores nothing
    page.wait_for_timeout(300)
    assert storage(page) == (None, [])
    assert page.locator("#n").inner_text() == first  # this page view keeps its number
    page.goto(url)  # a later page: a new visitor (the other number), nothing stored
    expect(page.locator("#n")).not_to_have_text("555-010-0000")
    assert page.locator("#n").inner_text() not in (first, "555-010-0000")
    assert storage(page) == (None, [])


def test_consent_page_swaps_without_storing(broker: BrokerProcess,
                                            make_pool: Callable[..., dict], fresh_site: Site,
                                            visitor: Browser, r: redis.Redis) -> None:
    pool = make_pool(target_number=TARGET, numbers=["+15550100007", "+15550100008"])
    url = fresh_site.page("/consent-page", '<p id="n">555-010-0000</p>',
                          tag(js(broker), pool["id"], consent="page"))
    page = visitor.new_page()
    page.goto(url)
    expect(page.locator("#n")).not_to_have_text("555-010-0000")
    shown = page.locator("#n").inner_text()
    assert storage(page) == (None, [])
    page.evaluate("window.dni.consent()")
    page.wait_for_function("() => localStorage.getItem('dni')")
    vid = visitor_id(visitor)
    assert {b["visitor_id"] for b in visitor.posts("/v1/dni/session")} == {vid}
    # Consented: the next page view is the same visitor, with the same number, whenever
    # the site calls consent() (before or after this page view's own session answer).
    for delay in (0, 600):
        page.goto(url)
        page.wait_for_timeout(delay)
        page.evaluate("window.dni.consent()")
        expect(page.locator("#n")).to_have_text(shown)
        page.wait_for_timeout(300)  # no late answer changes it back
        expect(page.locator("#n")).to_have_text(shown)
    assert r.exists(vkey(pool["id"], vid))


def test_consent_queued_before_load(broker: BrokerProcess, pool: dict, fresh_site: Site,
                                    visitor: Browser) -> None:
    head = '<script>(window.dni = window.dni || []).push("consent")</script>' + tag(
        js(broker), pool["id"], consent="wait")
    page = visitor.new_page()
    page.goto(fresh_site.page("/consent-queued", '<p id="n">555-010-0000</p>', head))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    assert storage(page)[0]


def test_pinned_url_with_integrity(broker: BrokerProcess, pool: dict, fresh_site: Site,
                                   visitor: Browser) -> None:
    info = httpx.get(broker.url + "/v1/dni/snippet").json()
    head = (f'<script async src="{info["url"]}" integrity="{info["integrity"]}" '
            f'crossorigin="anonymous" data-pools="{pool["id"]}"></script>')
    page = visitor.new_page()
    page.goto(fresh_site.page("/pinned", '<p id="n">555-010-0000</p>', head))
    expect(page.locator("#n")).to_have_text("555-010-0007")


def test_demo_page(broker: BrokerProcess, pool: dict, visitor: Browser) -> None:
    page = visitor.new_page()
    page.goto(f"{broker.url}/demo?pool={pool['id']}")
    expect(page.locator(".num").first).to_have_text("(555) 010-0007")
    expect(page.locator(".num").nth(2)).to_have_text("+15550100007")
    expect(page.locator("a[href^='tel:']")).to_have_attribute("href", "tel:+15550100007")
    assert "(555) 010-0000" in page.locator("li[data-dni-noswap]").inner_text()
    page.click("#add")
    expect(page.locator("#later + li")).to_have_text("Added after load: 5550100007")


def test_storage_blocked_still_swaps(broker: BrokerProcess, pool: dict, fresh_site: Site,
                                     visitor: Browser) -> None:
    """localStorage and cookies that throw (privacy modes, sandboxed frames): the snippet
    swaps with a visitor id for this page view and raises nothing."""
    page = visitor.new_page()
    page.add_init_script("""
      Object.defineProperty(window, "localStorage", {get() { throw new Error("blocked"); }});
      Object.defineProperty(Document.prototype, "cookie",
                            {get() { throw new Error("blocked"); }, set() { throw new Error("blocked"); }});
    """)
    page.goto(fresh_site.page("/blocked", '<p id="n">555-010-0000</p>', tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007")


def test_the_backup_number_the_site_shows_elsewhere_stays(broker: BrokerProcess,
                                                          make_pool: Callable[..., dict],
                                                          fresh_site: Site, visitor: Browser,
                                                          admin: httpx.Client) -> None:
    """The pool was full: the snippet showed the backup number where the site's number
    was. When a tracking number frees up it replaces what the snippet wrote, and only
    that: the same backup number printed by the site (the main office's) stays."""
    pool = make_pool(0, target_number=TARGET, fallback_number="+15550100009")
    page = visitor.new_page()
    page.goto(fresh_site.page("/backup-elsewhere", '<p id="n">Sales 555-010-0000</p>'
                              '<p id="o">Office 555-010-0009</p>',
                              tag(js(broker), pool["id"], heartbeat="1")))
    expect(page.locator("#n")).to_have_text("Sales 555-010-0009")
    admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": [NUMBER]})
    expect(page.locator("#n")).to_have_text("Sales 555-010-0007", timeout=8000)
    expect(page.locator("#o")).to_have_text("Office 555-010-0009")


def test_short_sessions_keep_their_number_while_the_page_beats(
        broker: BrokerProcess, make_pool: Callable[..., dict], fresh_site: Site,
        visitor: Browser, r: redis.Redis) -> None:
    """A pool whose sessions (2 s) are shorter than the broker's heartbeat interval: the
    broker tells the snippet to beat at half the session length, so the number holds."""
    pool = make_pool(target_number=TARGET, numbers=["+15550100007", "+15550100008"],
                     session_ttl_s=2)
    page = visitor.new_page()
    page.goto(fresh_site.page("/short", '<p id="n">555-010-0000</p>',
                              tag(js(broker), pool["id"])))
    expect(page.locator("#n")).not_to_have_text("555-010-0000")
    shown = page.locator("#n").inner_text()
    page.wait_for_timeout(4500)  # more than two session lengths
    expect(page.locator("#n")).to_have_text(shown)
    assert sessions_started(r, pool["id"]) == 1
    assert heartbeats(r, pool["id"], visitor_id(visitor)) >= 3


def test_encoded_links_long_emoji_tags_and_the_queue_after_load(
        broker: BrokerProcess, pool: dict, fresh_site: Site, visitor: Browser) -> None:
    """A tel: link with %20 for spaces is swapped like its text; an emoji tag cut at the
    length limit still makes a valid request; dni.push() works once the snippet runs."""
    url = fresh_site.page("/encoded", '<a id="a" href="tel:+1%20555%20010%200000">'
                          '+1 555 010 0000</a>'
                          '<a id="b" href="sms:+15550100000&body=Price%3F%20A%20%26%20B%20%23deal">'
                          'text</a><a id="c" href="tel:+15550100000,,1234%23">ext</a>',
                          tag(js(broker), pool["id"]))
    page = visitor.new_page()
    page.goto(url + "?utm_source=fb&utm_content=" + "%F0%9F%98%80" * 600)
    expect(page.locator("#a")).to_have_text("+1 555 010 0007")
    expect(page.locator("#a")).to_have_attribute("href", "tel:+1%20555%20010%200007")
    # only the number changes: the rest of the link keeps its encoding
    expect(page.locator("#b")).to_have_attribute(
        "href", "sms:+15550100007&body=Price%3F%20A%20%26%20B%20%23deal")
    expect(page.locator("#c")).to_have_attribute("href", "tel:+15550100007,,1234%23")
    (body,) = visitor.posts("/v1/dni/session", 1)
    assert body["utm_content"] == "\U0001F600" * 512
    page.evaluate("(window.dni = window.dni || []).push('swap')")  # no error: queue API


def test_a_failed_session_request_is_asked_again(broker: BrokerProcess, pool: dict,
                                                 fresh_site: Site, visitor: Browser) -> None:
    """One failed request (network error) does not leave the visit untracked."""
    failed: list[str] = []

    def once(route: object) -> None:
        if not failed:
            failed.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    page = visitor.new_page()
    page.route("**/v1/dni/session", once)
    page.goto(fresh_site.page("/retry", '<p id="n">555-010-0000</p>',
                              tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007", timeout=9000)
    assert len(failed) == 1


def _set_hidden(page: object, hidden: bool) -> None:
    page.evaluate(  # type: ignore[attr-defined]
        "h => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => h});"
        " document.dispatchEvent(new Event('visibilitychange')); }", hidden)


def test_a_tab_hidden_past_data_idle_stops_beating(broker: BrokerProcess, pool: dict,
                                                   fresh_site: Site, visitor: Browser,
                                                   r: redis.Redis) -> None:
    """A tab left in the background lets its session lapse (so the number goes back to
    the pool); shown again, it checks its session at once."""
    page = visitor.new_page()
    page.goto(fresh_site.page("/idle", '<p id="n">555-010-0000</p>',
                              tag(js(broker), pool["id"], heartbeat="1", idle="0.02")))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    vid = visitor_id(visitor)
    page.wait_for_timeout(1500)
    assert heartbeats(r, pool["id"], vid) >= 1  # beating while shown
    _set_hidden(page, True)
    page.wait_for_timeout(2000)  # past data-idle (1.2 s): the beats stop
    stopped = heartbeats(r, pool["id"], vid)
    page.wait_for_timeout(2500)
    assert heartbeats(r, pool["id"], vid) == stopped
    _set_hidden(page, False)  # shown again: one beat at once, then every second
    page.wait_for_timeout(600)
    assert heartbeats(r, pool["id"], vid) == stopped + 1
    expect(page.locator("#n")).to_have_text("555-010-0007")


def test_tags_are_read_before_the_site_cleans_its_address(fresh_site: Site,
                                                           visitor: Browser) -> None:
    """A site that strips utm_* from its address on load (history.replaceState) while the
    config is still on its way: the session still carries the landing page's tags."""
    fresh_site.config = {"pools": {"p1": {"target_number": TARGET, "heartbeat_s": 60}}}
    clean = ("<script>addEventListener('load', () => "
             "history.replaceState(null, '', location.pathname))</script>")
    page = visitor.new_page()
    url = fresh_site.page("/clean", '<p id="n">555-010-0000</p>' + clean,
                          tag(fresh_site.url + "/fake/slowconfig/snippet.js", "p1",
                              timeout="5000"))
    page.goto(url + "?utm_source=google&gclid=abc")
    page.wait_for_function("location.search == ''")  # cleaned before the config came
    (body, *_) = visitor.posts("/v1/dni/session", 1)
    assert (body["utm_source"], body["gclid"]) == ("google", "abc")
    assert body["landing_page"].endswith("/clean?utm_source=google&gclid=abc")


STRIP = "history.replaceState(null, '', location.pathname)"


@pytest.mark.parametrize("script", [
    f"<script>{STRIP}</script>",  # inline, at the end of the body
    f"<script type='module'>{STRIP}</script>",  # deferred
    f"<script>addEventListener('DOMContentLoaded', () => {STRIP})</script>",
], ids=["inline", "module", "domcontentloaded"])
def test_tags_are_read_when_the_site_cleaned_its_address_before_the_snippet_ran(
        script: str, fresh_site: Site, visitor: Browser) -> None:
    """The site strips utm_* and gclid from its address before the async snippet has even
    run: the snippet reads the tags from the navigation entry's address (the one the
    visitor landed on)."""
    fresh_site.config = {"pools": {"p1": {"target_number": TARGET, "heartbeat_s": 60}}}
    page = visitor.new_page()
    url = fresh_site.page("/strip", '<p id="n">555-010-0000</p>' + script,
                          tag(fresh_site.url + "/fake/latejs/snippet.js", "p1"))
    page.goto(url + "?utm_source=google&gclid=abc")
    assert page.evaluate("location.search") == ""  # cleaned before the snippet came
    (body, *_) = visitor.posts("/v1/dni/session", 1)
    assert (body.get("utm_source"), body.get("gclid")) == ("google", "abc")
    # landing_page is the address the page showed when the snippet ran: the site's own
    assert body["landing_page"].endswith("/strip")


def test_a_full_pool_is_asked_again_when_a_lapsed_tab_is_shown(
        broker: BrokerProcess, make_pool: Callable[..., dict], fresh_site: Site,
        visitor: Browser) -> None:
    """The pool was full (backup number shown) and the tab was hidden past data-idle, so
    its asking again stopped; shown again, it asks at once and gets the freed number."""
    pool = make_pool(target_number=TARGET, numbers=[NUMBER], fallback_number="+15550100009")
    admin = httpx.Client(base_url=broker.url,
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    httpx.post(broker.url + "/v1/dni/session",
               json={"pool_id": pool["id"], "visitor_id": "someone-else"}).raise_for_status()
    page = visitor.new_page()
    page.goto(fresh_site.page("/lapsed", '<p id="n">(555) 010-0000</p>',
                              tag(js(broker), pool["id"], heartbeat="1", idle="0.02")))
    expect(page.locator("#n")).to_have_text("(555) 010-0009")
    _set_hidden(page, True)
    page.wait_for_timeout(2000)  # past data-idle (1.2 s): it stops asking
    asked = len(visitor.posts("/v1/dni/session"))
    # the number is freed (taken out, which ends its session, and put back)
    admin.delete(f"/v1/pools/{pool['id']}/numbers/{NUMBER}").raise_for_status()
    admin.post(f"/v1/pools/{pool['id']}/numbers", json={"numbers": [NUMBER]}).raise_for_status()
    page.wait_for_timeout(2000)
    assert len(visitor.posts("/v1/dni/session")) == asked  # still hidden: not asked
    _set_hidden(page, False)
    expect(page.locator("#n")).to_have_text("(555) 010-0007", timeout=1500)
    admin.close()


def test_a_throwing_cookie_setter_does_not_stop_storage(broker: BrokerProcess, pool: dict,
                                                        fresh_site: Site,
                                                        visitor: Browser) -> None:
    """A consent tool that makes `document.cookie = ...` throw: the visitor is still kept
    in localStorage, so the next page is the same visitor with the same number."""
    guard = ("<script>const d = Object.getOwnPropertyDescriptor(Document.prototype, 'cookie');"
             "Object.defineProperty(document, 'cookie', {get: () => d.get.call(document),"
             " set: (v) => { if (v.startsWith('dni_')) throw new Error('blocked'); }});"
             "</script>")
    page = visitor.new_page()
    first = fresh_site.page("/guard1", '<p id="n">555-010-0000</p>',
                            guard + tag(js(broker), pool["id"]))
    page.goto(first)
    expect(page.locator("#n")).to_have_text("555-010-0007")
    assert page.evaluate("JSON.parse(localStorage.getItem('dni')).v")
    page.goto(fresh_site.page("/guard2", '<p id="n">555-010-0000</p>',
                              guard + tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    bodies = visitor.posts("/v1/dni/session", 2)
    assert len({b["visitor_id"] for b in bodies}) == 1, bodies


def test_a_failed_or_slow_config_request_is_asked_again(
        broker: BrokerProcess, make_pool: Callable[..., dict], fresh_site: Site,
        new_visitor: Callable[[], Browser]) -> None:
    """The first GET /v1/dni/config fails (a network error, a 503) or hangs past
    data-timeout: the snippet asks again (after 5 s, as for sessions), and the visitor gets
    a tracking number in the same page view. A 4xx (the tag names no valid pools) is final."""
    pool = make_pool(target_number=TARGET, numbers=[f"+155501000{i:02d}" for i in range(1, 5)])
    url = fresh_site.page("/config-retry", '<p id="n">555-010-0000</p>',
                          tag(js(broker), pool["id"], timeout="800"))
    pages = {}
    started = time.monotonic()
    def failing_once(first: str, asked: list[str]) -> Callable[[object], None]:
        def config(route: object) -> None:
            asked.append(route.request.url)  # type: ignore[attr-defined]
            if len(asked) > 1:
                route.continue_()  # type: ignore[attr-defined]
            elif first == "abort":
                route.abort()  # type: ignore[attr-defined]
            elif first != "hang":  # "hang": never answered; given up after data-timeout
                error = {"error": {"code": "some_error", "message": "..."}}
                route.fulfill(status=int(first), json=error,  # type: ignore[attr-defined]
                              headers={"access-control-allow-origin": "*"})
        return config

    for first in ("abort", "503", "hang", "422"):
        asked: list[str] = []
        page = new_visitor().new_page()
        page.route("**/v1/dni/config*", failing_once(first, asked))
        page.goto(url)
        pages[first] = (page, asked)
    for first in ("abort", "503", "hang"):
        page, asked = pages[first]
        expect(page.locator("#n")).to_have_text(re.compile(r"555-010-000[1-4]"), timeout=9000)
        assert len(asked) == 2, first
    page, asked = pages["422"]
    page.wait_for_timeout(max(0, 6500 - 1000 * (time.monotonic() - started)))
    assert len(asked) == 1
    assert page.locator("#n").inner_text() == "555-010-0000"


def test_history_calls_cost_no_rescan(broker: BrokerProcess, pool: dict, fresh_site: Site,
                                      visitor: Browser) -> None:
    """A page that calls history.replaceState on every animation frame (a scroll spy, a
    filter UI) or pushes routes pays nothing for it: no walk of the whole document, no
    storage write. Content that changes meanwhile is still swapped (the observer's)."""
    spy = """
      window.__walks = 0; window.__writes = 0;
      const walker = Document.prototype.createTreeWalker;
      Document.prototype.createTreeWalker = function (root, ...rest) {
        if (root === document) window.__walks++;
        return walker.call(this, root, ...rest);
      };
      const cookie = Object.getOwnPropertyDescriptor(Document.prototype, "cookie");
      Object.defineProperty(Document.prototype, "cookie", {get() { return cookie.get.call(this); },
        set(v) { if (v.startsWith("dni_")) window.__writes++; cookie.set.call(this, v); }});
    """
    page = visitor.new_page()
    page.add_init_script(spy)
    page.goto(fresh_site.page("/history", '<p id="n">555-010-0000</p><div id="more"></div>',
                              tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    page.wait_for_timeout(100)
    before = page.evaluate("[window.__walks, window.__writes]")
    assert before[1] >= 1
    page.evaluate("""() => new Promise((done) => {
      let frame = 0;
      const step = () => {
        frame++;
        history.replaceState(null, "", "?section=" + frame);
        if (frame % 10 == 0) history.pushState(null, "", "/history/" + frame);
        if (frame == 30) document.getElementById("more").textContent = "Sales 555.010.0000";
        if (frame < 60) requestAnimationFrame(step); else setTimeout(done, 200);
      };
      requestAnimationFrame(step);
    })""")
    expect(page.locator("#more")).to_have_text("Sales 555.010.0007")
    assert page.evaluate("[window.__walks, window.__writes]") == before


def test_a_pool_the_broker_does_not_know_gives_the_page_its_number_back(
        broker: BrokerProcess, pool: dict, fresh_site: Site,
        new_visitor: Callable[[], Browser], admin: httpx.Client) -> None:
    """The pool is deleted while a page is open: the next heartbeat gets 404
    pool_not_found, so the snippet stops beating and shows the page's own number again.
    A config naming a pool the broker no longer knows (a cached answer): the session's 404
    is not asked again."""
    stale = new_visitor()
    stale_page = stale.new_page()
    stale_page.route("**/v1/dni/config*", lambda route: route.fulfill(
        json={"pools": {"gone": {"target_number": TARGET, "country_code": 1}}},
        headers={"access-control-allow-origin": "*"}))
    stale_page.goto(fresh_site.page("/stale", '<p id="n">555-010-0000</p>',
                                    tag(js(broker), "gone")))
    asked_at = time.monotonic()

    b = new_visitor()
    page = b.new_page()
    page.goto(fresh_site.page("/deleted", '<p id="n">555-010-0000</p>'
                              '<a id="a" href="tel:+15550100000">call</a>',
                              tag(js(broker), pool["id"], heartbeat="1")))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    expect(page.locator("#a")).to_have_attribute("href", "tel:+15550100007")
    admin.delete(f"/v1/pools/{pool['id']}").raise_for_status()
    expect(page.locator("#n")).to_have_text("555-010-0000", timeout=4000)
    expect(page.locator("#a")).to_have_attribute("href", "tel:+15550100000")
    beats = len(b.posts("/v1/dni/heartbeat"))
    page.wait_for_timeout(2500)
    assert len(b.posts("/v1/dni/heartbeat")) == beats  # no more beats
    assert len(b.posts("/v1/dni/session")) == 1  # nor a new session

    stale_page.wait_for_timeout(max(0, 6000 - 1000 * (time.monotonic() - asked_at)))
    assert len(stale.posts("/v1/dni/session")) == 1  # past the first retry (5 s)
    assert stale_page.locator("#n").inner_text() == "555-010-0000"


@pytest.mark.parametrize("when", ["static", "late", "before consent"])
def test_a_second_tag_hands_its_pools_to_the_running_snippet(
        when: str, broker: BrokerProcess, make_pool: Callable[..., dict], fresh_site: Site,
        visitor: Browser) -> None:
    """Two tags on one page (a theme's for one pool; a tag manager's for another, in the
    head too, where either may run first, or added after load naming the first pool
    again): the second tag's pools join the running snippet, and a pool named twice still
    gets one session. Under the first tag's data-consent="wait", the late tag's pools
    wait for consent with the others."""
    sales = make_pool(target_number=TARGET, numbers=["+15550100007"])
    support = make_pool(target_number="+15550200000", numbers=["+15550200005"])
    second = support["id"] if when == "static" else f"{support['id']},{sales['id']}"
    wait = {"consent": "wait"} if when == "before consent" else {}
    head = tag(js(broker), sales["id"], **wait)
    body = '<p id="a">Sales 555-010-0000</p><p id="b">Support 555-020-0000</p>'
    if when == "static":
        head += tag(js(broker), second)
    else:
        body += ("<script>addEventListener('load', () => setTimeout(() => {"
                 "const s = document.createElement('script');"
                 f"s.src = '{js(broker)}'; s.dataset.pools = '{second}';"
                 "document.body.append(s); }, 300))</script>")
    page = visitor.new_page()
    page.goto(fresh_site.page(f"/two-tags-{when.replace(' ', '-')}", body, head))
    if when == "before consent":
        page.wait_for_function("document.querySelectorAll('script[data-pools]').length == 2")
        page.wait_for_timeout(500)
        assert [u for _, u, _ in visitor.requests if u.startswith(broker.url + "/v1/")] == []
        page.evaluate("window.dni.consent()")
    expect(page.locator("#a")).to_have_text("Sales 555-010-0007")
    expect(page.locator("#b")).to_have_text("Support 555-020-0005")
    page.wait_for_timeout(300)
    asked = sorted(b["pool_id"] for b in visitor.posts("/v1/dni/session", 2))
    assert asked == sorted([sales["id"], support["id"]])


def test_numbers_in_open_shadow_roots_are_swapped(broker: BrokerProcess, pool: dict,
                                                  fresh_site: Site, visitor: Browser) -> None:
    """A web component (a site header, say) renders into an open shadow root: its numbers
    and links are swapped, and so is what it renders there later, and in a shadow root
    added later, nested in another."""
    body = """<p id="n">555-010-0000</p><site-header id="h"></site-header>
      <script>
        customElements.define("site-header", class extends HTMLElement {
          constructor() {
            super();
            this.attachShadow({mode: "open"}).innerHTML =
              '<a id="l" href="tel:+15550100000">Call (555) 010-0000</a><p id="later"></p>';
          }
        });
      </script>"""
    page = visitor.new_page()
    page.goto(fresh_site.page("/shadow", body, tag(js(broker), pool["id"])))
    expect(page.locator("#n")).to_have_text("555-010-0007")
    expect(page.locator("#l")).to_have_text("Call (555) 010-0007")  # locators pierce open roots
    expect(page.locator("#l")).to_have_attribute("href", "tel:+15550100007")
    page.evaluate("""() => {
      document.getElementById("h").shadowRoot.getElementById("later").textContent =
        "Sales 555.010.0000";
      const outer = document.createElement("div");
      const inner = document.createElement("div");
      inner.attachShadow({mode: "open"}).innerHTML = '<span id="nested">+1 555 010 0000</span>';
      outer.attachShadow({mode: "open"}).append(inner);
      document.body.append(outer);
    }""")
    expect(page.locator("#later")).to_have_text("Sales 555.010.0007")
    expect(page.locator("#nested")).to_have_text("+1 555 010 0007")


def test_a_page_with_coep_require_corp_loads_the_plain_tag(broker: BrokerProcess, pool: dict,
                                                         fresh_site: Site,
                                                         visitor: Browser) -> None:
    """A cross-origin isolated page (Cross-Origin-Embedder-Policy: require-corp) loads the
    one-line tag, without `crossorigin`: the script is served with
    Cross-Origin-Resource-Policy: cross-origin (the broker's API answers with CORS)."""
    page = visitor.new_page()
    page.goto(fresh_site.page("/coep", '<p id="n">555-010-0000</p>', tag(js(broker), pool["id"]),
                              headers={"cross-origin-embedder-policy": "require-corp"}))
    expect(page.locator("#n")).to_have_text("555-010-0007")


def test_text_placed_directly_in_a_shadow_root_is_swapped(broker: BrokerProcess, pool: dict,
                                                         fresh_site: Site,
                                                         visitor: Browser) -> None:
    """A component that renders its text straight into its open shadow root, with no
    element around it (Lit's html`Call ${phone}`): the number is swapped, and it alone
    starts the session (it is the only place the number is on the page)."""
    body = """<phone-a id="x"></phone-a>
      <script>
        customElements.define("phone-a", class extends HTMLElement {
          constructor() {
            super();
            this.attachShadow({mode: "open"}).append("Call us: 555-010-0000");
          }
        });
      </script>"""
    page = visitor.new_page()
    page.goto(fresh_site.page("/shadow-text", body, tag(js(broker), pool["id"])))
    page.wait_for_function(
        "document.getElementById('x').shadowRoot.textContent == 'Call us: 555-010-0007'")
    page.evaluate("""() => document.getElementById("x").shadowRoot.firstChild.nodeValue =
                  "Sales 555.010.0000" """)  # changed later: the observer's
    page.wait_for_function(
        "document.getElementById('x').shadowRoot.textContent == 'Sales 555.010.0007'")
    assert len(visitor.posts("/v1/dni/session", 1)) == 1


TRACKING = re.compile(r"555-010-000[1-3]")
PROXY_404 = {"status": 404, "body": "<html><body>404 page not found</body></html>",
             "content_type": "text/html", "headers": {"access-control-allow-origin": "*"}}


def test_a_404_that_is_not_the_brokers_is_a_failure_like_any_other(
        broker: BrokerProcess, make_pool: Callable[..., dict], fresh_site: Site,
        new_visitor: Callable[[], Browser]) -> None:
    """A reverse proxy's own 404 page (the broker behind it being redeployed) is not the
    broker's 404 pool_not_found: to heartbeats, the number stays and beats go on once the
    broker is back; to the first session or config request, it is asked again (5 s)."""
    pool = make_pool(target_number=TARGET, numbers=[f"+155501000{i:02d}" for i in range(1, 4)])
    body = '<p id="n">555-010-0000</p><a id="a" href="tel:+15550100000">call</a>'
    url = fresh_site.page("/proxy-404", body, tag(js(broker), pool["id"], heartbeat="1"))

    def once(asked: list[str]) -> Callable[[object], None]:
        def answer(route: object) -> None:
            asked.append(route.request.url)  # type: ignore[attr-defined]
            if len(asked) > 1:
                route.continue_()  # type: ignore[attr-defined]
            else:
                route.fulfill(**PROXY_404)  # type: ignore[attr-defined]
        return answer

    first: dict[str, tuple[object, list[str]]] = {}
    for path in ("session", "config"):
        asked: list[str] = []
        page = new_visitor().new_page()
        page.route(f"**/v1/dni/{path}*", once(asked))
        page.goto(url)
        first[path] = (page, asked)

    beating = new_visitor()
    page = beating.new_page()
    page.goto(url)
    expect(page.locator("#n")).to_have_text(TRACKING)
    shown = page.locator("#n").inner_text()
    page.route("**/v1/dni/heartbeat", lambda route: route.fulfill(**PROXY_404))
    beating.posts("/v1/dni/heartbeat", 2)  # two beats answered by the proxy
    page.wait_for_timeout(300)
    page.unroute("**/v1/dni/heartbeat")
    beats = len(beating.posts("/v1/dni/heartbeat"))
    page.wait_for_timeout(1500)
    assert len(beating.posts("/v1/dni/heartbeat")) > beats  # beating again
    assert page.locator("#n").inner_text() == shown
    assert page.locator("#a").get_attribute("href") == "tel:+1" + shown.replace("-", "")

    for path, (page, asked) in first.items():
        expect(page.locator("#n")).to_have_text(TRACKING, timeout=9000)
        assert len(asked) == 2, path


def test_landing_page_is_the_address_the_page_shows(fresh_site: Site,
                                                    visitor: Browser) -> None:
    """A site removes a one-time login token (?token_hash=, ?email=) and the tags from its
    address before any tag runs: the tags are still read from the navigation entry, but
    landing_page, sent and stored, is the cleaned address: the token never leaves."""
    fresh_site.config = {"pools": {"p1": {"target_number": TARGET, "heartbeat_s": 60}}}
    head = ("<script>history.replaceState(null, '', location.pathname)</script>"
            + tag(fresh_site.url + "/fake/status:excluded/snippet.js", "p1"))
    page = visitor.new_page()
    url = fresh_site.page("/login", '<p id="n">555-010-0000</p>', head)
    page.goto(url + "?utm_source=mail&token_hash=SECRET123&email=jane%40example.com")
    (body, *_) = visitor.posts("/v1/dni/session", 1)
    assert body["utm_source"] == "mail"
    assert body["landing_page"] == url
    stored = page.evaluate("localStorage.dni")
    assert "SECRET123" not in stored and "jane" not in stored
    assert "SECRET123" not in str(body)


@pytest.mark.parametrize("second", ["{{pool_id}}", ",".join(f"p{i:015x}" for i in range(21))],
                         ids=["unrendered-id", "21-pools"])
def test_under_consent_wait_a_bad_second_tag_leaves_the_first_working(
        second: str, broker: BrokerProcess, pool: dict, fresh_site: Site,
        visitor: Browser) -> None:
    """Under data-consent="wait", a second tag whose pools the broker refuses (an
    unrendered {{pool_id}}, or more than 20 pools: a 422, final) gets its own config
    request: the first tag's pool still works after consent."""
    body = ('<p id="n">555-010-0000</p>'
            "<script>addEventListener('load', () => setTimeout(() => {"
            "const s = document.createElement('script');"
            f"s.src = '{js(broker)}'; s.dataset.pools = '{second}';"
            "document.body.append(s); }, 100))</script>")
    page = visitor.new_page()
    page.goto(fresh_site.page("/wait-bad-second", body,
                              tag(js(broker), pool["id"], consent="wait")))
    page.wait_for_function("document.querySelectorAll('script[data-pools]').length == 2")
    page.wait_for_timeout(300)
    page.evaluate("window.dni.consent()")
    expect(page.locator("#n")).to_have_text("555-010-0007")
