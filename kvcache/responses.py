"""The Responses API conversation store: each stored response with the full history a next turn continues from.

Why the gateway keeps it: ``previous_response_id`` must work on every backend (a chat-only deployment keeps no
state), right after the call and from any replica, so the history lives where every replica looks: Redis when
``metering.redis`` is configured, else the ledger's database (``kvcache.responses_sql``). Entries expire after
the team's ``responses.store_ttl_days``; a team reads and deletes only its own (another team's id is "absent").

Size: a stored record is refused beyond ``MAX_STORED_BYTES`` (its JSON encoding), never truncated: a silently
shortened history would change what the next turn means. Ingress checks the history it is about to send (prior
items + this turn's input) against ``MAX_HISTORY_BYTES`` before any upstream call (``check_history``), so a
conversation that outgrew the store is refused with a 400 before it costs anything; the extra room up to
``MAX_STORED_BYTES`` is for the answer's output items and the Response object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

# 8 MiB of JSON is ~2M tokens of text: beyond any model's context window, so only a conversation that could not be
# sent anyway (or one carrying many inline images) hits it.
MAX_HISTORY_BYTES = 8 * 1024 * 1024
MAX_STORED_BYTES = 16 * 1024 * 1024


class HistoryTooLarge(ValueError):
    """A history (or stored record) over its cap; ``size`` and ``cap`` in bytes of JSON. Ingress answers 400."""

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"conversation history of {size} bytes exceeds the store's limit of {cap} bytes; "
                         "start a new conversation (without previous_response_id) or send a shorter input")
        self.size = size
        self.cap = cap


class ResponseStoreUnavailable(RuntimeError):
    """The store's backend did not answer (Redis or the database down, a pool timeout). Ingress answers 503: a
    conversation that cannot be read or stored must not be served as if it had no history."""


def check_history(items: list[dict[str, Any]]) -> int:
    """The JSON size of ``items``; raises ``HistoryTooLarge`` past ``MAX_HISTORY_BYTES``."""
    size = len(orjson.dumps(items))
    if size > MAX_HISTORY_BYTES:
        raise HistoryTooLarge(size, MAX_HISTORY_BYTES)
    return size


@dataclass(frozen=True)
class StoredResponse:
    """One response as stored.

    ``items`` is the full Responses-format history a next turn with ``previous_response_id`` continues from: the
    prior items, this turn's input items, then this response's output items, which are exactly
    ``response["output"]`` in order (``input_items`` relies on it). ``response`` is the Response object as returned
    to the client. ``tier`` and ``deployment`` served it (a continued conversation stays there when it may).
    ``created_at`` is Unix seconds, as in the Response object.
    """

    id: str
    team: str
    created_at: int
    items: list[dict[str, Any]]
    response: dict[str, Any]
    tier: str | None = None
    deployment: str | None = None

    @property
    def input_items(self) -> list[dict[str, Any]]:
        """The items this response was generated from (``GET /v1/responses/{id}/input_items``): the history
        without this response's own output."""
        output = self.response.get("output")
        n = len(output) if isinstance(output, list) else 0
        return self.items[: len(self.items) - n] if n else list(self.items)

    def encode(self) -> bytes:
        """The stored value (orjson); raises ``HistoryTooLarge`` past ``MAX_STORED_BYTES``."""
        value = orjson.dumps({"id": self.id, "team": self.team, "created_at": self.created_at, "items": self.items,
                              "response": self.response, "tier": self.tier, "deployment": self.deployment})
        if len(value) > MAX_STORED_BYTES:
            raise HistoryTooLarge(len(value), MAX_STORED_BYTES)
        return value

    @classmethod
    def decode(cls, value: bytes) -> StoredResponse:
        v = orjson.loads(value)
        return cls(id=v["id"], team=v["team"], created_at=int(v["created_at"]), items=v["items"],
                   response=v["response"], tier=v.get("tier"), deployment=v.get("deployment"))


class ResponseStore(Protocol):
    async def put(self, item: StoredResponse, ttl_s: float) -> None:
        """Store (or replace) ``item`` for ``ttl_s`` seconds; raises ``HistoryTooLarge`` past the cap. Readable from
        every replica once this returns. Every method raises ``ResponseStoreUnavailable`` when the backend fails."""
        ...

    async def get(self, response_id: str, team: str) -> StoredResponse | None:
        """The response, or None when absent, expired, or another team's."""
        ...

    async def delete(self, response_id: str, team: str) -> bool:
        """Whether a live response of ``team`` was deleted (False: absent, expired, or another team's)."""
        ...

    async def close(self) -> None: ...


async def open_response_store(ledger_url: str, redis_url: str | None, ledger_schema: str = "public") -> ResponseStore:
    """Redis when configured (every replica shares it already), else the ledger's database; opened and ready."""
    if redis_url:
        from kvcache.responses_redis import RedisResponseStore

        return RedisResponseStore(redis_url)
    from kvcache.responses_sql import open_sql_response_store

    return await open_sql_response_store(ledger_url, ledger_schema)
