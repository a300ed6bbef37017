"""The usage record: one per request, streamed or not, successful or failed.

It carries the key's id, never the key. Money is integer nano-dollars. The record's billing day is the UTC date its
request *started*, the same day its budget reservation was taken against, so the ledger and the budget agree at
midnight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import orjson

from metering.usage import Usage


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    started_at: datetime
    ended_at: datetime
    team: str
    key_id: str
    requested_model: str
    model: str
    status: int
    tags: Mapping[str, str] = field(default_factory=dict)
    tier: str = ""
    deployment: str = ""
    purpose: str = "chat"
    score: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    usage_estimated: bool = False
    cost_nanos: int = 0
    counterfactual_cost_nanos: int = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    error: str | None = None
    system_tokens: int = 0  # the leading system prompt's share of prompt_tokens (audit: oversized prompts)
    context_saved_tokens: int = 0  # prompt tokens rolling summaries kept from being sent
    api: str = "chat"  # the wire format the client spoke: chat | completions | embeddings | responses | messages
    response_id: str | None = None  # the answer's own id (chatcmpl-..., resp_..., msg_...): feedback finds it by it
    router_model: str | None = None  # the id of the routing model that scored the request (None: nothing scored)

    def __post_init__(self) -> None:
        for name in ("started_at", "ended_at"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() != UTC.utcoffset(None):
                raise ValueError(f"{name} must be a UTC-aware datetime, got {value!r}")
        for name in ("cost_nanos", "counterfactual_cost_nanos"):
            if type(getattr(self, name)) is not int:
                raise TypeError(f"{name} must be int nano-dollars")
        if not self.request_id:
            raise ValueError("request_id is required")

    @property
    def day(self) -> date:
        return self.started_at.date()

    @classmethod
    def with_usage(cls, usage: Usage, **fields: Any) -> UsageRecord:
        """Build from a normalised ``Usage`` so token fields cannot be transposed by hand."""
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_estimated=usage.estimated,
            **fields,
        )

    def to_json(self) -> bytes:
        """One line, no newline inside (orjson escapes them), the spool's unit of durability."""
        # Not dataclasses.asdict: its recursive deep copy is most of the cost on the request path.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["tags"] = dict(self.tags)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, line: bytes) -> UsageRecord:
        data = orjson.loads(line)
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        data["ended_at"] = datetime.fromisoformat(data["ended_at"])
        if "api" not in data:  # spooled by a version before the column: the rule the ledger's migration applies
            data["api"] = legacy_api(data.get("purpose", "chat"))
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(UsageRecord))


def legacy_api(purpose: str) -> str:
    """The ``api`` of a record written before the column existed: those versions spoke only OpenAI's chat,
    completions and embeddings, and only embeddings had a purpose of their own (a legacy completion counts as chat).
    ``metering.ledger.schema.LEGACY_API_SQL`` is the same rule for stored rows."""
    return "embeddings" if purpose == "embedding" else "chat"
