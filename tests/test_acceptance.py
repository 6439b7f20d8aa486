"""Issue 2's acceptance checks, through HTTP against a real broker and Redis."""

from __future__ import annotations

import asyncio
import time

import httpx


async def _first_visits(url: str, pool_id: str, count: int) -> list[dict]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def visit(i: int) -> dict:
            res = await client.post("/v1/dni/session",
                                    json={"pool_id": pool_id, "visitor_id": f"first-{i}"})
            assert res.status_code == 200, res.text
            return res.json()
        return await asyncio.gather(*(visit(i) for i in range(count)))


def test_200_concurrent_first_visits_to_a_5_number_pool(broker, make_pool, admin):
    pool = make_pool(5, fallback_number="+15550199999")
    answers = asyncio.run(_first_visits(broker.url, pool["id"], 200))
    new = [a for a in answers if a["status"] == "new"]
    fallback = [a for a in answers if a["status"] == "fallback"]
    assert len(new) == 5 and len(fallback) == 195
    assert {a["number"] for a in new} == set(pool["numbers"])
    assert len({a["session_id"] for a in new}) == 5
    assert all(a["number"] == "+15550199999" and a["session_id"] is None for a in fallback)
    stats = admin.get(f"/v1/pools/{pool['id']}/stats").json()
    assert stats["active_sessions"] == 5 and stats["utilization"] == 1.0


def test_returning_visitor_gets_the_same_number_and_session(http, make_pool):
    pool = make_pool(5)
    body = {"pool_id": pool["id"], "visitor_id": "returning"}
    first = http.post("/v1/dni/session", json=body).json()
    for _ in range(3):
        again = http.post("/v1/dni/session", json=body).json()
        assert again["status"] == "reused"
        assert (again["number"], again["session_id"]) == (first["number"], first["session_id"])


def test_number_is_assigned_again_after_the_session_length(http, make_pool):
    pool = make_pool(1, session_ttl_s=1)
    a = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "a"}).json()
    b = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "b"}).json()
    assert a["status"] == "new" and b["status"] == "unavailable"
    time.sleep(max(0.0, a["expires_at"] / 1000 - time.time()) + 0.15)
    b = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "b"}).json()
    assert b["status"] == "new" and b["number"] == a["number"]
    hb = http.post("/v1/dni/heartbeat", json={"pool_id": pool["id"], "visitor_id": "a",
                                              "session_id": a["session_id"]}).json()
    assert hb["status"] == "expired"  # never revived, never stolen back


def test_heartbeats_keep_a_session_alive_past_its_length(http, make_pool):
    pool = make_pool(1, session_ttl_s=1)
    a = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "a"}).json()
    hb_body = {"pool_id": pool["id"], "visitor_id": "a", "session_id": a["session_id"]}
    deadline = time.time() + 2.5  # 2.5 session lengths
    while time.time() < deadline:
        time.sleep(0.3)
        hb = http.post("/v1/dni/heartbeat", json=hb_body).json()
        assert hb["status"] == "alive" and hb["number"] == a["number"]
        other = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "b"})
        assert other.json()["status"] == "unavailable"
    again = http.post("/v1/dni/session", json={"pool_id": pool["id"], "visitor_id": "a"}).json()
    assert again["status"] == "reused" and again["session_id"] == a["session_id"]
