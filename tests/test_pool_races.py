"""Admin changes to one pool running at the same time: they take turns (a per-pool lock),
so the pool and the global number index stay consistent; and a delete racing writers that
bypass the lock gives up after a bounded number of rounds with 409 `pool_busy`."""

from __future__ import annotations

import asyncio

import pytest
import redis

from broker.engine import Engine, PoolNotFound
from broker.errors import ApiError
from broker.keys import Keys
from broker.models import NumbersAdd, PoolCreate, PoolUpdate
from broker.pools import Pools
from broker.redisconn import PipelinedRedis, RedisError
from broker.scripts import load_scripts
from tests.conftest import numbers


async def _services(url: str) -> tuple[PipelinedRedis, Engine, Pools]:
    """The broker's engine and pool service in this process, on a real Redis."""
    conn = PipelinedRedis(url)
    scripts = load_scripts()
    await conn.load_scripts(list(scripts.values()))
    engine = Engine(conn, Keys(), scripts)
    return conn, engine, Pools(engine, "US", 1800, 60)


async def _delete_while_adding(url: str, added_per_removal: int) -> dict:
    """Create a 3-number pool with a live session, then delete it while every number
    removal is followed by `added_per_removal` new numbers added through the admin path."""
    conn, engine, pools = await _services(url)
    try:
        pool = await pools.create(PoolCreate(name="busy", numbers=numbers(3)))
        pool_id = pool["id"]
        held = await engine.session(pool_id, "visitor-1", "203.0.113.7\nua\n{}")
        fresh = iter(numbers(100, start=500))
        added: list[str] = []
        remove = engine.remove_number

        async def remove_while_adding(pid: str, number: str) -> None:
            await remove(pid, number)
            for _ in range(added_per_removal):  # a writer that does not take the lock
                added.append(next(fresh))
                await engine.claim_numbers(pid, [added[-1]])
                await engine.add_numbers(pid, [added[-1]])

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


async def _race(url: str, *steps: str) -> dict:
    """Run admin changes on one pool (and a second pool q) at the same time."""
    conn, engine, pools = await _services(url)
    try:
        p = await pools.create(PoolCreate(name="p", numbers=numbers(2),
                                          target_number="+15550190000"))
        q = await pools.create(PoolCreate(name="q", target_number="+15550190000"))
        x = p["numbers"][0]
        release = engine.release_numbers

        async def slow_release(pid: str, nums: list[str]) -> int:
            await asyncio.sleep(0.02)  # widen the gap between the removal and its release
            return await release(pid, nums)

        engine.release_numbers = slow_release  # type: ignore[method-assign]
        ops = {"remove": lambda: pools.remove_number(p["id"], x),
               "readd": lambda: pools.add_numbers(p["id"], NumbersAdd(numbers=[x])),
               "target_b": lambda: pools.update(p["id"], PoolUpdate(target_number="+15550190001")),
               "target_c": lambda: pools.update(p["id"], PoolUpdate(target_number="+15550190002"))}
        results = await asyncio.gather(*(ops[name]() for name in steps), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        return {"p": await pools.get(p["id"]), "q": q, "x": x}
    finally:
        await conn.close()


@pytest.mark.parametrize("order", [("remove", "readd"), ("readd", "remove")])
def test_removing_and_readding_a_number_at_once_keeps_its_claim(redis_server, r, order):
    for _ in range(10):
        r.flushall()
        out = asyncio.run(_race(redis_server, *order))
        in_pool = out["x"] in out["p"]["numbers"]
        claim = r.hget(Keys().number_index(), out["x"])
        # in the pool exactly when the index says it is the pool's
        assert (claim == out["p"]["id"].encode()) == in_pool, (order, in_pool, claim)


def test_two_target_changes_at_once_leave_the_index_as_the_last_one(redis_server, r):
    fixed = Keys().fixed_index()
    for _ in range(10):
        r.flushall()
        out = asyncio.run(_race(redis_server, "target_b", "target_c"))
        target = out["p"]["target_number"]
        other = {"+15550190001": "+15550190002", "+15550190002": "+15550190001"}[target]
        counts = {k.decode(): int(v) for k, v in r.hgetall(fixed).items()}
        # q still names the old target; p names the one that won; the loser is free
        assert counts == {"+15550190000": 1, target: 1}, counts
        assert other not in counts


def test_a_lock_whose_reply_was_lost_is_recognised_as_ours():
    """The SET NX ran but its reply was lost with the connection: reading the key back
    tells whether this change holds the lock (else nobody would, for two minutes)."""
    from broker.pools import _take
    from broker.redisconn import ConnectionLost

    class Dropped:
        def __init__(self, holder: bytes | None) -> None:
            self.holder = holder

        async def execute(self, *args: object) -> object:
            if args[0] == "SET":
                raise ConnectionLost("dropped with SET in flight")
            return self.holder

    assert asyncio.run(_take(Dropped(b"tok1"), "k", "tok1")) is True
    assert asyncio.run(_take(Dropped(b"other"), "k", "tok1")) is False
    assert asyncio.run(_take(Dropped(None), "k", "tok1")) is False


def test_a_pool_refused_half_way_gives_its_numbers_back(redis_server, r):
    """Redis refuses the pool itself after its numbers were claimed (out of memory, say):
    the claims and the target/backup counts are taken back, so the numbers are not stuck
    with a pool that never existed, and the same pool can be created once Redis accepts."""
    keys = Keys()
    req = PoolCreate(name="p", numbers=numbers(3), target_number="+15558880000",
                     fallback_number="+15558880001")

    async def go() -> None:
        conn, engine, pools = await _services(redis_server)
        try:
            claimed = []
            claim = engine.claim_numbers

            async def claim_then(pool_id: str, nums: list[str]) -> None:
                await claim(pool_id, nums)
                claimed.extend(r.hkeys(keys.number_index()))

            async def refuse(*_: object) -> bool:
                raise RedisError("OOM command not allowed when used memory > 'maxmemory'.")

            engine.claim_numbers = claim_then  # type: ignore[method-assign]
            engine.create_pool = refuse  # type: ignore[method-assign]
            with pytest.raises(RedisError):
                await pools.create(req)
            assert len(claimed) == 3  # they were claimed, then given back
            assert r.hlen(keys.number_index()) == 0 and r.hlen(keys.fixed_index()) == 0
            del engine.create_pool
            pool = await pools.create(req)
            assert sorted(pool["numbers"]) == numbers(3)
            assert r.hget(keys.fixed_index(), "+15558880000") == b"1"
        finally:
            await conn.close()

    asyncio.run(go())


def test_numbers_refused_half_way_are_given_back_but_the_pools_own_stay(redis_server, r):
    """Adding numbers that Redis refuses after the claim (out of memory): the new ones are
    given back, and a number the pool already had keeps its owner (else another pool
    could claim it too)."""
    keys = Keys()

    async def go() -> None:
        conn, engine, pools = await _services(redis_server)
        try:
            pool = await pools.create(PoolCreate(name="p", numbers=numbers(2)))
            await pools.set_active(pool["id"], numbers(2)[1], False)  # inactive: still its

            async def refuse(*_: object) -> int:
                raise RedisError("OOM command not allowed when used memory > 'maxmemory'.")

            engine.add_numbers = refuse  # type: ignore[method-assign]
            with pytest.raises(RedisError):
                await pools.add_numbers(pool["id"], NumbersAdd(numbers=numbers(4)))
            owners = r.hmget(keys.number_index(), numbers(4))
            assert owners == [pool["id"].encode()] * 2 + [None, None]
        finally:
            await conn.close()

    asyncio.run(go())


async def _scans_when_leaving(url: str, shared: bool) -> int:
    """Delete a pool whose backup number another pool names too (or none): how many
    pools' settings the broker read to find an heir for the backup index."""
    conn, _, pools = await _services(url)
    try:
        backup = "+15550196666"
        others = [await pools.create(PoolCreate(name=f"o{i}", numbers=numbers(1, start=700 + i),
                                                fallback_number=backup if shared and i == 0
                                                else None)) for i in range(3)]
        leaving = await pools.create(PoolCreate(name="leaving", numbers=numbers(1, start=720),
                                                fallback_number=backup))
        reads = 0
        execute = conn.execute

        async def counting(*args):
            nonlocal reads
            reads += args[:1] == ("HGET",) and args[2:] == ("fallback",)
            return await execute(*args)

        conn.execute = counting  # type: ignore[method-assign]
        await pools.delete(leaving["id"])
        conn.execute = execute  # type: ignore[method-assign]
        for pool in others:
            await pools.delete(pool["id"])
        return reads
    finally:
        await conn.close()


def test_leaving_a_backup_number_no_other_pool_names_reads_no_other_pool(redis_server, r):
    """The backup index's heir is looked for (a read of every pool) only when another
    pool still names the number: with 10,000 pools that scan slowed every request."""
    assert asyncio.run(_scans_when_leaving(redis_server, shared=False)) == 0
    assert asyncio.run(_scans_when_leaving(redis_server, shared=True)) >= 3
