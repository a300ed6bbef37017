"""Small key-value caches for summaries, response cache and tier stickiness: Redis when configured (shared by
every replica), in process otherwise. Values are bytes; every entry has a TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class KeyValueCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """LRU with per-entry expiry, bounded by entry count."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._data[key] = (time.monotonic() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Shared across replicas. A Redis outage degrades to a miss, never to a failed request."""

    def __init__(self, url: str, prefix: str = "tg:kv:") -> None:
        from metering.redis_client import open_redis  # redis-py is imported only when Redis is configured

        self._client = open_redis(url)
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._prefix + key)
        except Exception:  # redis raises ConnectionError, TimeoutError, ResponseError...: all mean "no value"
            return None
        return value if isinstance(value, bytes) else None  # the client does not decode: bytes or None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._client.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except Exception:
            return

    async def close(self) -> None:
        await self._client.aclose()


def open_cache(redis_url: str | None) -> KeyValueCache:
    return RedisCache(redis_url) if redis_url else MemoryCache()
