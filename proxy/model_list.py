"""The models a key may use, in the client's own format: OpenAI's model objects (``GET /v1/models``,
``GET /v1/models/{id}``), or Anthropic's ``ModelInfo`` and its cursor pages when the request carries
``anthropic-version`` (the anthropic SDK and Claude Code send it on every call).

The names come from ``Policy.allowed_models`` (the one table ``decide()`` and ``router.embeddings`` accept from the
team); nothing here knows about routing. No model has a release date here, so both formats give the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import TiergateError

_EPOCH = "1970-01-01T00:00:00Z"  # Anthropic's ModelInfo: "may be set to an epoch value if the release date is unknown"
_DEFAULT_LIMIT, _MAX_LIMIT = 20, 1000  # Anthropic's own bounds for GET /v1/models


def openai_model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "tiergate"}


def anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": _EPOCH, "lifecycle": "active"}


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit")
    if raw is None:
        return _DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise TiergateError("invalid_request.invalid_value", f"'limit' must be an integer from 1 to {_MAX_LIMIT}",
                            param="limit")
    return int(raw)


def _position(names: Sequence[str], cursor: str, param: str) -> int:
    try:
        return names.index(cursor)
    except ValueError:
        raise TiergateError("invalid_request.invalid_value", f"{param!r} {cursor!r} is not a model this key may use",
                            param=param) from None


def anthropic_page(names: Sequence[str], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of Anthropic's list: ``limit`` models after ``after_id`` or before ``before_id`` (the SDK's
    auto-pagination follows ``last_id`` / ``first_id`` while ``has_more``)."""
    limit = _limit(query)
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise TiergateError("invalid_request.invalid_value", "give 'after_id' or 'before_id', not both",
                            param="before_id")
    if before is not None:
        end = _position(names, before, "before_id")
        start = max(0, end - limit)
        has_more = start > 0
    else:
        start = _position(names, after, "after_id") + 1 if after is not None else 0
        end = min(len(names), start + limit)
        has_more = end < len(names)
    page = names[start:end]
    return {"data": [anthropic_model(name) for name in page], "has_more": has_more,
            "first_id": page[0] if page else None, "last_id": page[-1] if page else None}
