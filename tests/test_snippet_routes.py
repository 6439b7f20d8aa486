"""The snippet's HTTP routes on a real broker: script caching, pinned URL, config, demo."""

from __future__ import annotations

import base64
import hashlib
from typing import Callable

import httpx

from tests.conftest import ROOT

BUILT = (ROOT / "snippet" / "dni.min.js").read_bytes()


def test_snippet_js_is_cacheable(http: httpx.Client) -> None:
    res = http.get("/snippet.js")
    assert res.status_code == 200
    assert res.content == BUILT
    assert res.headers["content-type"].startswith("text/javascript")
    assert "max-age=" in res.headers["cache-control"]
    etag = res.headers["etag"]
    again = http.get("/snippet.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert http.get("/snippet.js", headers={"If-None-Match": '"other"'}).status_code == 200
    # Pages with Cross-Origin-Embedder-Policy: require-corp load the plain tag only so.
    assert res.headers["cross-origin-resource-policy"] == "cross-origin"
    assert again.headers["cross-origin-resource-policy"] == "cross-origin"


def test_pinned_url_and_integrity(http: httpx.Client) -> None:
    info = http.get("/v1/dni/snippet").json()
    digest = base64.b64encode(hashlib.sha384(BUILT).digest()).decode()
    assert info["integrity"] == "sha384-" + digest
    assert info["url"].startswith(str(http.base_url).rstrip("/") + "/snippet.")
    res = http.get(info["url"])
    assert res.status_code == 200 and res.content == BUILT
    assert "immutable" in res.headers["cache-control"]
    assert res.headers["access-control-allow-origin"] == "*"  # needed for SRI cross-origin
    assert info["integrity"] in info["tag"] and 'crossorigin="anonymous"' in info["tag"]
    assert res.headers["cross-origin-resource-policy"] == "cross-origin"
    wrong = http.get("/snippet.00000000.js")
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "not_found"


def test_config_gives_target_numbers(http: httpx.Client, make_pool: Callable[..., dict]) -> None:
    with_target = make_pool(target_number="(555) 010-0000")
    without = make_pool()
    res = http.get(f"/v1/dni/config?pools={with_target['id']},{without['id']},nosuchpool")
    assert res.status_code == 200
    assert res.headers["access-control-allow-origin"] == "*"
    assert "max-age=" in res.headers["cache-control"]
    pools = res.json()["pools"]
    assert set(pools) == {with_target["id"], without["id"]}  # unknown pools left out
    assert pools[with_target["id"]]["target_number"] == "+15550100000"
    assert pools[with_target["id"]]["country_code"] == 1
    assert pools[with_target["id"]]["heartbeat_s"] > 0
    assert pools[without["id"]]["target_number"] is None
    again = http.get(res.request.url, headers={"If-None-Match": res.headers["etag"]})
    assert again.status_code == 304


def test_config_errors(http: httpx.Client) -> None:
    cases = {"/v1/dni/config": "missing_field", "/v1/dni/config?pools=": "missing_field",
             "/v1/dni/config?pools=a{b}": "invalid_pool_id",
             "/v1/dni/config?pools=" + ",".join(f"p{i}" for i in range(21)): "too_many_pools"}
    for url, code in cases.items():
        res = http.get(url)
        assert res.status_code == 422, url
        assert res.json() == {"error": {"code": code, "message": res.json()["error"]["message"]}}


def test_demo(http: httpx.Client, make_pool: Callable[..., dict]) -> None:
    pool = make_pool(target_number="+15550100000", name="Demo <pool>")
    page = http.get(f"/demo?pool={pool['id']}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'data-pools="{pool["id"]}"' in page.text and "/snippet.js" in page.text
    assert "(555) 010-0000" in page.text and "tel:+15550100000" in page.text
    assert "Demo &lt;pool&gt;" in page.text
    help_page = http.get("/demo")
    assert help_page.status_code == 200 and "?pool=" in help_page.text
    assert http.get("/demo?pool=nosuchpool").json()["error"]["code"] == "pool_not_found"
    no_target = make_pool()
    res = http.get(f"/demo?pool={no_target['id']}")
    assert res.status_code == 422 and res.json()["error"]["code"] == "no_target_number"
