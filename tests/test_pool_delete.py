"""Deleting a pool while another admin keeps adding numbers to it: the delete gives up
after a bounded number of rounds with 409 `pool_busy`, and leaves a consistent pool."""

from __future__ import annotations

import asyncio

import pytest
import redis

from broker.engine import Engine, PoolNotFound
from broker.errors import ApiError
from broker.keys import Keys
from broker.models import NumbersAdd, PoolCreate
from broker.pools import Pools
from broker.redisconn import PipelinedRedis
from broker.scripts import load_scripts
from tests.conftest import numbers


async def _delete_while_adding(url: str, added_per_removal: int) -> dict:
    """Create a 3-number pool with a live session, then delete it while every number
    removal is followed by `added_per_removal` new numbers added through the admin path."""
    conn = PipelinedRedis(url)
    scripts = load_scripts()
    await conn.load_scripts(list(scripts.values()))
    engine = Engine(conn, Keys(), scripts)
    pools = Pools(engine, "US", 1800, 60)
    try:
        pool = await pools.create(PoolCreate(name="busy", numbers=numbers(3)))
        pool_id = pool["id"]
        held = await engine.session(pool_id, "visitor-1", "203.0.113.7\nua\n{}")
        fresh = iter(numbers(100, start=500))
        added: list[str] = []
        remove = engine.remove_number

        async def remove_while_adding(pid: str, number: str) -> None:
            await remove(pid, number)
            for _ in range(added_per_removal):
                added.append(next(fresh))
                await pools.add_numbers(pid, NumbersAdd(numbers=[added[-1]]))

        engine.remove_number = remove_while_adding  # type: ignore[method-assign]
        out: dict = {"pool_id": pool_id, "held": held.number, "added": added}
        try:
            await pools.delete(pool_id)
            out["deleted"] = True
        except ApiError as exc:
            out.update(deleted=False, status=exc.status, code=exc.code)
            out["left"] = (await pools.get(pool_id))["numbers"]
            engine.remove_number = remove  # type: ignore[method-assign]
            await pools.delete(pool_id)  # nobody adds any more: this one succeeds
        with pytest.raises(PoolNotFound):
            await pools.get(pool_id)
        return out
    finally:
        await conn.close()


def test_delete_gives_up_with_pool_busy_and_leaves_a_consistent_pool(redis_server, r):
    index = Keys().number_index()
    out = asyncio.run(_delete_while_adding(redis_server, 1))
    assert not out["deleted"] and (out["status"], out["code"]) == (409, "pool_busy")
    # five rounds, each removing what it saw while one number arrived per removal
    assert len(out["added"]) == 3 + 3 + 3 + 3 + 3
    # what was left is exactly the numbers added during the last round, still this pool's
    assert sorted(out["left"]) == sorted(out["added"][-3:])
    # after the retried delete nothing of the pool is left in the number index
    assert r.hmget(index, numbers(3) + out["added"]) == [None] * 18
    # only the outbox may remain (its entries are the sidecar's to move)
    prefix = f"dni:{{{out['pool_id']}}}:"
    assert set(r.keys(prefix + "*")) <= {(prefix + "outbox").encode()}


def test_delete_succeeds_when_numbers_stop_arriving(redis_server, r):
    out = asyncio.run(_delete_while_adding(redis_server, 0))
    assert out["deleted"] and out["added"] == []
    assert r.hmget(Keys().number_index(), numbers(3)) == [None] * 3
