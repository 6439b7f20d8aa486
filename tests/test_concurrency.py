"""Many concurrent clients against a small pool: the invariant from answers and from Redis."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import httpx
import pytest
import redis

from broker.keys import Keys
from tests.scriptclient import check_invariant, snapshot

CLIENTS = 64
REQUESTS = 4000
VISITORS = 80


async def _load(url: str, pool_id: str, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    sessions: dict[str, str] = {}
    answers: list[dict] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                visitor = f"v{rnd.randrange(VISITORS)}"
                if visitor in sessions and rnd.random() < 0.3:
                    body = {"pool_id": pool_id, "visitor_id": visitor,
                            "session_id": sessions[visitor]}
                    res = await client.post("/v1/dni/heartbeat", json=body)
                    kind = "heartbeat"
                else:
                    res = await client.post("/v1/dni/session",
                                            json={"pool_id": pool_id, "visitor_id": visitor})
                    kind = "session"
                assert res.status_code == 200, res.text
                answer = res.json()
                if kind == "session" and answer["session_id"]:
                    sessions[visitor] = answer["session_id"]
                if kind == "heartbeat":
                    answer["session_id"] = body["session_id"]
                answers.append({"kind": kind, "visitor": visitor, **answer})
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return answers


def _check_answers(answers: list[dict], ttl_ms: int, pool_numbers: set[str]) -> dict:
    """Per number, the sessions that held it never overlap in time. Returns them."""
    start: dict[str, int] = {}
    end: dict[str, int] = defaultdict(int)
    number_of: dict[str, str] = {}
    owner: dict[str, str] = {}
    for a in answers:
        if a["status"] in ("new", "reused", "alive"):
            sid = a["session_id"]
            assert a["number"] in pool_numbers
            assert number_of.setdefault(sid, a["number"]) == a["number"]
            assert owner.setdefault(sid, a["visitor"]) == a["visitor"]
            if a["status"] == "new":
                start[sid] = a["expires_at"] - ttl_ms
            end[sid] = max(end[sid], a["expires_at"])
    by_number: dict[str, list[str]] = defaultdict(list)
    for sid, number in number_of.items():
        by_number[number].append(sid)
    for number, sids in by_number.items():
        spans = sorted((start[s], end[s], s) for s in sids)
        for (s1, e1, a), (s2, e2, b) in zip(spans, spans[1:]):
            assert e1 <= s2, f"{number} held by {a} until {e1} and by {b} from {s2}"
    return by_number


@pytest.mark.slow
@pytest.mark.parametrize("ttl_s", [1, 3600])
def test_concurrent_clients_never_share_a_number(broker, make_pool, r: redis.Redis, ttl_s):
    pool = make_pool(20, session_ttl_s=ttl_s, fallback_number="+15550199999")
    pool_numbers = set(pool["numbers"])
    keys = Keys("dni")
    visitors = [f"v{i}" for i in range(VISITORS)]
    snapshots = []

    async def run() -> list[dict]:
        load = asyncio.create_task(_load(broker.url, pool["id"], seed=ttl_s))
        while not load.done():  # check Redis's state while the load runs
            snapshots.append(snapshot(r, keys, pool["id"], visitors))
            await asyncio.sleep(0.05)
        return await load

    started = time.monotonic()
    answers = asyncio.run(run())
    assert len(answers) == REQUESTS
    statuses = {a["status"] for a in answers}
    assert {"new", "reused", "fallback"} <= statuses
    holders = _check_answers(answers, ttl_s * 1000, pool_numbers)
    if ttl_s == 1:  # the run outlasts the session length: numbers changed hands
        assert time.monotonic() - started > 1.5
        assert sum(len(sids) for sids in holders.values()) > len(pool_numbers)
    else:
        assert all(len(sids) == 1 for sids in holders.values())
    snapshots.append(snapshot(r, keys, pool["id"], visitors))
    assert len(snapshots) > 3
    for snap in snapshots:
        check_invariant(snap, pool_numbers)
