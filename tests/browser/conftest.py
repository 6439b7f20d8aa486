"""Browser fixtures: headless Chromium (Debian's), a fixture site served by the test, and a
scriptable fake broker on that site for the failure cases.

The site runs on its own port, so the snippet talks to the real broker cross-origin, as it
does on a customer's site. Each test gets a new browser context (fresh cookies and
storage: a new visitor) and fails if the page raised any uncaught error.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ROOT, free_port

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
BUILT = ROOT / "snippet" / "dni.min.js"
TARGET = "+15550100000"  # the site's own number in every fixture page


class Site:
    """A tiny threaded web server: fixture pages, plus a fake broker under /fake/<mode>/.

    Fake broker modes (what `POST .../v1/dni/session` does; the config answer is
    `self.config` unless the mode is `slowconfig`):
      slow       answers a valid session after 3 s (the snippet gives up at ~1.5 s)
      error      500 with the contract's error body
      reset      closes the connection without answering
      garbage    200 with a body that is not JSON
      status:X   200 with {"status": X, "number": self.number or null, ...}
    and `latejs`: the snippet itself arrives after 0.5 s (the page has run its own scripts).
    """

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}  # a page's own extra headers
        self.config: dict = {"pools": {}}
        self.number: str | None = None
        self.requests: list[tuple[str, str, bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.send_header("access-control-allow-origin", "*")
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                site._handle(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                site._handle(self, "POST", self.rfile.read(length))

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def page(self, path: str, body: str, head: str = "",
             headers: dict[str, str] | None = None) -> str:
        """Register an HTML page at `path` (sent with `headers` too) and return its URL."""
        self.pages[path] = (f"<!doctype html><html><head><meta charset='utf-8'>{head}</head>"
                            f"<body>{body}</body></html>")
        self.headers[path] = headers or {}
        return self.url + path

    def _handle(self, h: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        url = urlsplit(h.path)
        self.requests.append((method, h.path, body))
        if url.path in self.pages:
            return h._send(200, self.pages[url.path].encode(), "text/html; charset=utf-8",
                           self.headers[url.path])
        parts = url.path.split("/", 3)  # "", "fake", mode, rest
        if len(parts) < 4 or parts[1] != "fake":
            return h._send(404, b"not found", "text/plain")
        mode, rest = parts[2], parts[3]
        if rest == "snippet.js":
            if mode == "latejs":
                time.sleep(0.5)
            return h._send(200, BUILT.read_bytes(), "text/javascript")
        if rest == "v1/dni/config":
            if mode == "slowconfig":
                time.sleep(3)
            return h._send(200, json.dumps(self.config).encode(), "application/json")
        if rest in ("v1/dni/session", "v1/dni/heartbeat"):
            if mode == "slow":
                time.sleep(3)
                answer = {"status": "new", "number": self.number, "session_id": "late",
                          "expires_at": 0, "heartbeat_s": 60}
                return h._send(200, json.dumps(answer).encode(), "application/json")
            if mode == "error":
                return h._send(500, b'{"error":{"code":"internal","message":"boom"}}',
                               "application/json")
            if mode == "reset":
                h.close_connection = True
                h.connection.close()
                return None
            if mode == "garbage":
                return h._send(200, b"<html>not json", "text/html")
            if mode.startswith("status:"):
                answer = {"status": mode[7:], "number": self.number, "session_id": None,
                          "expires_at": None, "heartbeat_s": 60}
                return h._send(200, json.dumps(answer).encode(), "application/json")
        return h._send(404, b"not found", "text/plain")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """One Chromium per test module. Not per session: while Playwright's sync API is
    started it keeps an event loop running on this thread, and later asyncio.run() calls
    (other suites) would fail."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium)")
    if not BUILT.exists():
        pytest.fail("snippet/dni.min.js is not built (cd snippet && npm ci && node build.mjs)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


@pytest.fixture
def fresh_site(site: Site) -> Site:
    site.pages.clear()
    site.headers.clear()
    site.requests.clear()
    site.config = {"pools": {}}
    site.number = None
    return site


class Browser:
    """One visitor: a fresh browser context; every page it opens is watched for errors."""

    def __init__(self, chromium: object) -> None:
        self.context = chromium.new_context()  # type: ignore[attr-defined]
        self.context.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.requests: list[tuple[str, str, str | None]] = []

    def new_page(self) -> object:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda req: self.requests.append((req.method, req.url, req.post_data)))
        return page

    def posts(self, path: str, at_least: int = 0) -> list[dict]:
        """Bodies of the POSTs this visitor sent to `path` (e.g. /v1/dni/session).

        Request events can reach the test after the page has already used the answer:
        with `at_least`, wait (up to 5 s) until that many have arrived.
        """
        deadline = time.monotonic() + 5
        while True:
            found = [json.loads(body or "{}") for method, url, body in self.requests
                     if method == "POST" and urlsplit(url).path.endswith(path)]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            self.context.pages[-1].wait_for_timeout(50)  # lets Playwright deliver events


@pytest.fixture
def visitor(chromium: object) -> Iterator[Browser]:
    b = Browser(chromium)
    yield b
    b.context.close()
    assert b.errors == [], f"uncaught errors on the page: {b.errors}"


@pytest.fixture
def new_visitor(chromium: object) -> Iterator[Callable[[], Browser]]:
    """Factory for more visitors in one test (each its own context)."""
    made: list[Browser] = []

    def make() -> Browser:
        b = Browser(chromium)
        made.append(b)
        return b

    yield make
    for b in made:
        b.context.close()
        assert b.errors == [], f"uncaught errors on the page: {b.errors}"


def tag(src: str, pools: str, **data: str) -> str:
    """The install tag, with extra data-* options given as keyword arguments."""
    extra = "".join(f' data-{k.replace("_", "-")}="{v}"' for k, v in data.items())
    return f'<script async src="{src}" data-pools="{pools}"{extra}></script>'


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)
