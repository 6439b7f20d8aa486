"""Pool records: creation, lookup and listing (the settings a pool's scripts read)."""

from __future__ import annotations

import secrets
from typing import Any

from .engine import Engine, PoolNotFound
from .errors import ApiError
from .models import PoolCreate
from .phone import InvalidNumber, normalize

# Pool hash field -> public name. ttl_ms and fallback are read by the scripts.
_PUBLIC = {"name": "name", "website_url": "website_url", "target_number": "target_number",
           "call_flow": "call_flow", "fallback": "fallback_number", "policy": "policy"}


def normalize_all(raw: list[str], region: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in raw:
        try:
            number = normalize(item, region)
        except InvalidNumber as exc:
            raise ApiError(422, "invalid_number", str(exc)) from None
        if number not in seen:
            seen.add(number)
            out.append(number)
    return out


def _optional_number(raw: str | None, region: str) -> str:
    if raw is None or raw == "":
        return ""
    try:
        return normalize(raw, region)
    except InvalidNumber as exc:
        raise ApiError(422, "invalid_number", str(exc)) from None


class Pools:
    def __init__(self, engine: Engine, region: str, default_ttl_s: int, heartbeat_s: int) -> None:
        self.engine = engine
        self.redis = engine.redis
        self.keys = engine.keys
        self.region = region
        self.default_ttl_s = default_ttl_s
        self.heartbeat_s = heartbeat_s

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
        flat: list[str] = []
        for name, value in fields.items():
            flat += (name, value)
        script = self.engine.scripts["create_pool"]
        for _ in range(3):  # a random 64-bit id collides essentially never; check anyway
            pool_id = secrets.token_hex(8)
            keys = [self.keys.pool(pool_id), self.keys.numbers(pool_id)]
            if await self.redis.evalsha(script, keys, [len(fields), *flat, *numbers]):
                break
        else:
            raise RuntimeError("could not allocate a pool id")
        await self.redis.execute("SADD", self.keys.pool_index(), pool_id)
        await self._index(pool_id, numbers)
        if fields["fallback"]:
            await self.redis.execute("HSET", self.keys.backup_index(), fields["fallback"], pool_id)
        return await self.get(pool_id)

    async def _index(self, pool_id: str, numbers: list[str]) -> None:
        """Record number -> pool in the global index used to attribute calls."""
        for i in range(0, len(numbers), 1000):
            chunk = numbers[i:i + 1000]
            await self.redis.execute("HSET", self.keys.number_index(),
                                     *(x for n in chunk for x in (n, pool_id)))

    async def get(self, pool_id: str) -> dict[str, Any]:
        raw = await self.redis.execute("HGETALL", self.keys.pool(pool_id))
        if not raw:
            raise PoolNotFound(pool_id)
        h = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
        numbers = await self.redis.execute("ZRANGE", self.keys.numbers(pool_id), 0, -1)
        pool: dict[str, Any] = {"id": pool_id}
        for field, public in _PUBLIC.items():
            pool[public] = h.get(field) or None
        pool["session_ttl_s"] = int(h["ttl_ms"]) // 1000
        pool["heartbeat_s"] = self.heartbeat_s
        pool["created_at"] = int(h.get("created_at", 0))
        pool["numbers"] = sorted(n.decode() for n in numbers)
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

    async def add_numbers(self, pool_id: str, raw: list[str]) -> dict[str, Any]:
        numbers = normalize_all(raw, self.region)
        added = await self.engine.add_numbers(pool_id, numbers)
        await self._index(pool_id, numbers)
        pool = await self.get(pool_id)
        pool["added"] = added
        return pool
