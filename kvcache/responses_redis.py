"""Stored responses in Redis: one key per (team, id), the orjson record as value, expiring with the team's TTL.

The team is part of the key, so another team's id is simply a missing key: reads and deletes are single commands
(no read-check-delete race) and never decode a record they must not return. Unlike the caches in
``kvcache.store``, errors propagate: a conversation silently not stored would break its next turn later, where the
cause is invisible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kvcache.responses import ResponseStoreUnavailable, StoredResponse


@contextmanager
def _unavailable() -> Iterator[None]:
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:  # ConnectionError, TimeoutError, READONLY...: the store did not answer
        raise ResponseStoreUnavailable(f"Redis: {type(exc).__name__}") from exc


class RedisResponseStore:
    def __init__(self, url: str, prefix: str = "tg:resp:", clock: Callable[[], float] = time.time) -> None:
        from metering.redis_client import open_redis  # redis-py is imported only when Redis is configured

        self._client = open_redis(url)
        self._prefix = prefix
        self._clock = clock  # only the expiry check on read uses it (Redis expires keys by its own clock)

    def _key(self, response_id: str, team: str) -> str:
        # Length-prefixed team: no (team, id) pair can spell another pair's key, whatever characters either holds.
        return f"{self._prefix}{len(team)}:{team}:{response_id}"

    async def put(self, item: StoredResponse, ttl_s: float) -> None:
        value = item.encode()
        # The expiry travels in the value too, so an injected clock (tests) and Redis agree on what is expired.
        expires = self._clock() + ttl_s
        with _unavailable():
            await self._client.set(self._key(item.id, item.team), f"{expires!r}\n".encode() + value,
                                   px=max(1, int(ttl_s * 1000)))

    async def get(self, response_id: str, team: str) -> StoredResponse | None:
        with _unavailable():
            raw = await self._client.get(self._key(response_id, team))
        if raw is None:
            return None
        expires, _, value = raw.partition(b"\n")
        if float(expires) <= self._clock():
            return None
        return StoredResponse.decode(value)

    async def delete(self, response_id: str, team: str) -> bool:
        # GETDEL (one atomic command) rather than DEL: an entry past its expiry by the store's clock is gone too,
        # but was not "deleted" by this call, exactly as ``get`` would not have returned it.
        with _unavailable():
            raw = await self._client.getdel(self._key(response_id, team))
        return raw is not None and float(raw.partition(b"\n")[0]) > self._clock()

    async def close(self) -> None:
        await self._client.aclose()
