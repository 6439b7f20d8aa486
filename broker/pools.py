"""Pools and their numbers: the admin operations, in the order that keeps the indexes true.

A tracking number is claimed in the global number index before it enters a pool, and its
claim is dropped only after it has left the pool; a pool's target and backup numbers are
counted in the index of fixed numbers, so neither kind can become the other.
"""

from __future__ import annotations

import asyncio
import functools

import secrets
import time
from typing import Any, Awaitable, Callable, TypeVar

import msgspec

from .engine import Engine, NumberInUse, NumberNotInPool, PoolNotFound
from .errors import ApiError
from .models import Buy, NumbersAdd, PoolCreate, PoolUpdate
from .phone import InvalidNumber, normalize
from .providers import (NotEnoughNumbers, Provider, ProviderError, buy_numbers,
                        release_all)
from .redisconn import RedisError, RedisUnavailable

# Pool hash field -> public name (null when empty). ttl_ms, fallback and policy are read
# by the scripts.
_PUBLIC = {"name": "name", "website_url": "website_url", "target_number": "target_number",
           "call_flow": "call_flow", "fallback": "fallback_number"}


def normalize_all(raw: list[str], region: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in raw:
        number = normalize_one(item, region)
        if number not in seen:
            seen.add(number)
            out.append(number)
    return out


def normalize_one(raw: object, region: str) -> str:
    try:
        return normalize(raw, region)
    except InvalidNumber as exc:
        raise ApiError(422, "invalid_number", str(exc)) from None


def _optional_number(raw: str | None, region: str) -> str:
    if raw is None or raw == "":
        return ""
    return normalize_one(raw, region)


def _in_use(exc: NumberInUse) -> ApiError:
    return ApiError(409, "number_in_use", str(exc))


def _not_in_pool(exc: NumberNotInPool) -> ApiError:
    return ApiError(404, "number_not_found", str(exc))


T = TypeVar("T")
LOCK_MS = 120_000  # longer than any admin change takes; a crashed holder's lock expires
LOCK_WAIT_S = 10.0


def _one_at_a_time(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run an admin change to a pool under that pool's lock. Changes read the pool, then
    update the pool's keys and the global number index in separate steps (the index lives
    in its own hash slot); two at once on one pool could interleave those steps (a number
    removed and re-added losing its claim, two target changes both dropping the old one)."""

    @functools.wraps(method)
    async def locked(self: "Pools", pool_id: str, *args: Any, **kwargs: Any) -> T:
        key, token = self.keys.admin_lock(pool_id), secrets.token_hex(8)
        deadline = time.monotonic() + LOCK_WAIT_S
        while not await _take(self.redis, key, token):
            if time.monotonic() > deadline:
                raise ApiError(409, "pool_busy", "another change to this pool is still "
                               "running; retry")
            await asyncio.sleep(0.01)
        try:
            return await method(self, pool_id, *args, **kwargs)
        finally:
            await self.redis.evalsha(self.engine.scripts["unlock"], [key], [token])

    return locked


async def _take(redis: Any, key: str, token: str) -> bool:
    """SET NX the lock; if the reply was lost (the connection dropped with it in flight),
    whether it is ours is read back rather than guessed (else it would block the pool for
    LOCK_MS with nobody holding it)."""
    try:
        return bool(await redis.execute("SET", key, token, "NX", "PX", LOCK_MS))
    except RedisUnavailable:
        return await redis.execute("GET", key) == token.encode()


def _fixed(target: str | None, backup: str | None) -> list[str]:
    """The pool's target and backup numbers as counted in the global index: each distinct
    number once per pool, so a pool naming one number as both counts it once."""
    fixed = [target] if target else []
    if backup and backup != target:
        fixed.append(backup)
    return fixed


class Pools:
    def __init__(self, engine: Engine, region: str, default_ttl_s: int, heartbeat_s: int,
                 providers: dict[str, Provider] | None = None) -> None:
        self.engine = engine
        self.redis = engine.redis
        self.keys = engine.keys
        self.region = region
        self.default_ttl_s = default_ttl_s
        self.heartbeat_s = heartbeat_s
        self.providers = providers or {}

    # -- buying ---------------------------------------------------------------------------

    def _provider(self, buy: Buy) -> Provider:
        provider = self.providers.get(buy.provider)
        if provider is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise ApiError(422, "provider_not_configured",
                           f"no provider {buy.provider!r} is configured (configured: {known})")
        return provider

    async def _buy(self, buy: Buy | None, call_flow: str) -> tuple[Provider | None, list[str]]:
        if buy is None:
            return None, []
        provider = self._provider(buy)
        try:
            bought = await buy_numbers(provider, buy.count, buy.area_code, buy.contains,
                                       buy.country, call_flow or None)
        except NotEnoughNumbers as exc:
            raise ApiError(409, "not_enough_numbers", str(exc)) from None
        except ProviderError as exc:
            raise ApiError(502, "provider_error", str(exc)) from None
        try:
            return provider, [normalize_one(n, self.region) for n in bought]
        except ApiError:  # a number the provider sold that we cannot use: give them back
            await release_all(provider, bought)
            raise ApiError(502, "provider_error", f"the provider sold numbers this broker "
                           f"cannot use ({', '.join(bought)}); they were released") from None

    # -- pools ----------------------------------------------------------------------------

    async def create(self, req: PoolCreate) -> dict[str, Any]:
        numbers = normalize_all(req.numbers, self.region)
        ttl_s = req.session_ttl_s or self.default_ttl_s
        fields = {
            "name": req.name,
            "website_url": req.website_url or "",
            "target_number": _optional_number(req.target_number, self.region),
            "call_flow": req.call_flow or "",
            "fallback": _optional_number(req.fallback_number, self.region),
            "policy": req.policy,
            "ttl_ms": str(ttl_s * 1000),
        }
        fixed = _fixed(fields["target_number"], fields["fallback"])
        # check the fixed numbers before buying anything
        try:
            await self.engine.fix_numbers(fixed, [])
        except NumberInUse as exc:
            raise _in_use(exc) from None
        pool_id = secrets.token_hex(8)  # 64 random bits: never seen twice
        provider, bought = None, []
        claimed: list[str] = []
        try:
            provider, bought = await self._buy(req.buy, fields["call_flow"])
            numbers += [n for n in bought if n not in numbers]
            try:
                await self.engine.claim_numbers(pool_id, numbers)
            except NumberInUse as exc:
                raise _in_use(exc) from None
            claimed = numbers
            flat = [x for pair in fields.items() for x in pair]
            try:
                created = await self.engine.create_pool(pool_id, flat, numbers)
            except RedisUnavailable:
                # it may have run: the pool may own the claims, the counts and the numbers
                # bought, so nothing is undone (the error says it may or may not exist)
                provider = None
                claimed = fixed = []
                raise
            if not created:
                raise RuntimeError(f"pool id {pool_id} exists already")
        except BaseException:  # refused (a number in use, Redis out of memory...): undo
            try:
                if claimed:
                    await self.engine.release_numbers(pool_id, claimed)
                if fixed:
                    await self.engine.fix_numbers([], fixed)
            finally:
                if provider is not None:
                    await release_all(provider, bought)
            raise
        await self._set_flows(pool_id, numbers, fields["call_flow"])
        await self.redis.execute("SADD", self.keys.pool_index(), pool_id)
        await self._set_backup(pool_id, None, fields["fallback"])
        pool = await self.get(pool_id)
        if bought:
            pool["bought"] = bought
        return pool

    async def _set_flows(self, pool_id: str, numbers: list[str], call_flow: str) -> None:
        if numbers and call_flow:
            flat = [x for n in numbers for x in (n, call_flow)]
            await self.redis.execute("HSET", self.keys.flows(pool_id), *flat)

    async def get(self, pool_id: str) -> dict[str, Any]:
        k = self.keys
        raw = await self.redis.execute("HGETALL", k.pool(pool_id))
        if not raw:
            raise PoolNotFound(pool_id)
        h = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
        numbers = await self.redis.execute("ZRANGE", k.numbers(pool_id), 0, -1)
        inactive = await self.redis.execute("ZRANGE", k.inactive(pool_id), 0, -1)
        flows = await self.redis.execute("HGETALL", k.flows(pool_id))
        pool: dict[str, Any] = {"id": pool_id}
        for field, public in _PUBLIC.items():
            pool[public] = h.get(field) or None
        pool["policy"] = h.get("policy") or "random"  # as the session script reads it
        pool["session_ttl_s"] = int(h["ttl_ms"]) // 1000
        pool["heartbeat_s"] = self.heartbeat_s
        pool["created_at"] = int(h.get("created_at", 0))
        pool["numbers"] = sorted(n.decode() for n in numbers)
        pool["inactive_numbers"] = sorted(n.decode() for n in inactive)
        pool["call_flows"] = {flows[i].decode(): flows[i + 1].decode()
                              for i in range(0, len(flows), 2)}
        return pool

    async def list(self) -> list[dict[str, Any]]:
        ids = sorted(i.decode() for i in await self.redis.execute("SMEMBERS", self.keys.pool_index()))
        pools = []
        for pool_id in ids:
            try:
                pools.append(await self.get(pool_id))
            except PoolNotFound:
                continue
        return pools

    @_one_at_a_time
    async def update(self, pool_id: str, req: PoolUpdate) -> dict[str, Any]:
        current = await self.get(pool_id)
        fields: dict[str, str] = {}
        unset = msgspec.UNSET
        if req.name is not unset:
            fields["name"] = req.name
        if req.website_url is not unset:
            fields["website_url"] = req.website_url or ""
        if req.call_flow is not unset:
            fields["call_flow"] = req.call_flow or ""
        if req.policy is not unset:
            fields["policy"] = req.policy
        if req.session_ttl_s is not unset:
            fields["ttl_ms"] = str(req.session_ttl_s * 1000)
        if req.target_number is not unset:
            fields["target_number"] = _optional_number(req.target_number, self.region)
        if req.fallback_number is not unset:
            fields["fallback"] = _optional_number(req.fallback_number, self.region)
        if not fields:
            return current
        old = _fixed(current["target_number"], current["fallback_number"])
        new = _fixed(fields.get("target_number", current["target_number"]),
                     fields.get("fallback", current["fallback_number"]))
        add = [n for n in new if n not in old]
        drop = [n for n in old if n not in new]
        try:
            await self.engine.fix_numbers(add, drop)
        except NumberInUse as exc:
            raise _in_use(exc) from None
        try:
            await self.engine.update_pool(pool_id, fields)
        except PoolNotFound:
            await self.engine.fix_numbers(drop, add)
            raise
        if "fallback" in fields:
            await self._set_backup(pool_id, current["fallback_number"], fields["fallback"])
        return await self.get(pool_id)

    async def _set_backup(self, pool_id: str, old: str | None, new: str | None) -> None:
        """Keep the backup number -> pool index (calls to it are `backup_number`). Several
        pools may share a backup number: when the indexed one stops naming it, another
        pool that still does takes its place."""
        index = self.keys.backup_index()
        if old and old != new and await self.redis.execute("HGET", index, old) == pool_id.encode():
            # Called after fix_numbers dropped this pool's count: when no pool names the
            # number any more (the usual case) there is no heir to look for, and the scan
            # of every pool (O(pools) reads, slowing the edge behind them) is skipped.
            others = await self.redis.execute("HGET", self.keys.fixed_index(), old)
            heir = await self._pool_with_backup(old, but=pool_id) if others else None
            if heir:
                await self.redis.execute("HSET", index, old, heir)
            else:
                await self.redis.execute("HDEL", index, old)
        if new:
            await self.redis.execute("HSET", index, new, pool_id)

    async def _pool_with_backup(self, number: str, but: str) -> str | None:
        ids = sorted(p.decode() for p in await self.redis.execute("SMEMBERS", self.keys.pool_index()))
        ids = [p for p in ids if p != but]
        backups = await asyncio.gather(*(self.redis.execute("HGET", self.keys.pool(p), "fallback")
                                         for p in ids))
        return next((p for p, b in zip(ids, backups) if b == number.encode()), None)

    @_one_at_a_time
    async def delete(self, pool_id: str) -> None:
        """Remove every number (ending the sessions holding them), then the pool."""
        k = self.keys
        pool = await self.get(pool_id)
        for _ in range(5):
            numbers = [n.decode() for n in await self.redis.execute("ZRANGE", k.numbers(pool_id), 0, -1)]
            numbers += [n.decode() for n in await self.redis.execute("ZRANGE", k.inactive(pool_id), 0, -1)]
            for number in numbers:
                try:
                    await self.engine.remove_number(pool_id, number)
                except NumberNotInPool:
                    pass
            await self.engine.release_numbers(pool_id, numbers)
            if await self.engine.delete_pool(pool_id):
                break
        else:
            raise ApiError(409, "pool_busy", "numbers kept being added while deleting; retry")
        await self.engine.fix_numbers([], _fixed(pool["target_number"], pool["fallback_number"]))
        await self._set_backup(pool_id, pool["fallback_number"], None)
        # The removals wrote `session.ended` entries to the pool's outbox, and entries the
        # sidecar had not moved yet may be there too: it empties the outboxes of deleted
        # pools before forgetting them.
        await self.redis.execute("SADD", k.draining_pools(), pool_id)
        await self.redis.execute("SREM", k.pool_index(), pool_id)

    # -- numbers --------------------------------------------------------------------------

    @_one_at_a_time
    async def add_numbers(self, pool_id: str, req: NumbersAdd) -> dict[str, Any]:
        numbers = normalize_all(req.numbers, self.region)
        if not numbers and req.buy is None:
            raise ApiError(422, "missing_field", "give `numbers`, `buy` or both")
        pool = await self.get(pool_id)
        call_flow = req.call_flow if req.call_flow is not None else (pool["call_flow"] or "")
        provider, bought = await self._buy(req.buy, call_flow)
        numbers += [n for n in bought if n not in numbers]
        try:
            await self.engine.claim_numbers(pool_id, numbers)
        except NumberInUse as exc:
            if provider is not None:
                await release_all(provider, bought)
            raise _in_use(exc) from None
        try:
            added = await self.engine.add_numbers(pool_id, numbers)
        except PoolNotFound:  # deleted meanwhile: none of them is the pool's
            await self.engine.release_numbers(pool_id, numbers)
            raise
        except RedisError:  # refused (out of memory): undo only this request's claims
            had = {*pool["numbers"], *pool["inactive_numbers"]}
            await self.engine.release_numbers(pool_id, [n for n in numbers if n not in had])
            raise
        # numbers of the pool that were deactivated: added again means active again
        reactivated = 0
        for number in sorted(set(pool["inactive_numbers"]) & set(numbers)):
            reactivated += await self.engine.activate_number(pool_id, number)
        await self._set_flows(pool_id, numbers, call_flow)
        pool = await self.get(pool_id)
        pool["added"] = added
        pool["reactivated"] = reactivated
        if bought:
            pool["bought"] = bought
        return pool

    @_one_at_a_time
    async def remove_number(self, pool_id: str, raw: str) -> None:
        number = normalize_one(raw, self.region)
        try:
            await self.engine.remove_number(pool_id, number)
        except NumberNotInPool as exc:
            raise _not_in_pool(exc) from None
        await self.engine.release_numbers(pool_id, [number])

    @_one_at_a_time
    async def set_active(self, pool_id: str, raw: str, active: bool) -> dict[str, Any]:
        number = normalize_one(raw, self.region)
        try:
            if active:
                changed = await self.engine.activate_number(pool_id, number)
            else:
                changed = await self.engine.deactivate_number(pool_id, number)
        except NumberNotInPool as exc:
            raise _not_in_pool(exc) from None
        return {"pool_id": pool_id, "number": number, "active": active, "changed": changed}
