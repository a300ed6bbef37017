"""``GET /v1/responses/{id}/input_items``: a stored history rendered as OpenAI's item list, and its cursor pages.

Pure (no storage, no HTTP). Clients may send short forms (``{"role": "user", "content": "hi"}``); the list
answers items as OpenAI lists them: a ``type``, an ``id`` (the cursor ``after`` names), message content as parts.
An item stored without an id gets one derived from the response id and its position, so the same page query
always names the same items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

Order = Literal["asc", "desc"]


class BadPageQuery(ValueError):
    """A query parameter the list cannot honour; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class PageQuery:
    limit: int = DEFAULT_LIMIT
    order: Order = "desc"  # OpenAI's default: newest first
    after: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> PageQuery:
        """From the URL query (``limit``, ``order``, ``after``; ``include`` is accepted and adds nothing: no stored
        item has optional fields to include)."""
        raw_limit = params.get("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
                raise BadPageQuery("limit", f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit[:20]!r}")
            limit = int(raw_limit)
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadPageQuery("order", f"order must be 'asc' or 'desc', got {order[:20]!r}")
        return cls(limit=limit, order=order, after=params.get("after") or None)


def _derived_id(response_id: str, index: int, kind: str) -> str:
    prefix = "msg" if kind == "message" else "item"
    return f"{prefix}_{hashlib.blake2b(f'{response_id}:{index}'.encode(), digest_size=16).hexdigest()}"


def listed_item(item: Mapping[str, Any], response_id: str, index: int) -> dict[str, Any]:
    """One stored item as the list shows it (the stored item is not changed)."""
    out = dict(item)
    kind = out.get("type") or ("message" if "role" in out else "item")
    out["type"] = kind
    if kind == "message":
        content = out.get("content")
        if isinstance(content, str):
            part = "output_text" if out.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": part, "text": content, **({"annotations": []} if part == "output_text" else {})}]
        out.setdefault("status", "completed")
    if not out.get("id"):
        out["id"] = _derived_id(response_id, index, kind)
    return out


def page(items: list[dict[str, Any]], response_id: str, query: PageQuery) -> dict[str, Any]:
    """The list object (``data``, ``first_id``, ``last_id``, ``has_more``) of ``items`` (oldest first)."""
    listed = [listed_item(item, response_id, i) for i, item in enumerate(items)]
    if query.order == "desc":
        listed.reverse()
    start = 0
    if query.after is not None:
        ids = [item["id"] for item in listed]
        if query.after not in ids:
            raise BadPageQuery("after", f"no input item with id {query.after[:80]!r} in response {response_id!r}")
        start = ids.index(query.after) + 1
    data = listed[start:start + query.limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": start + query.limit < len(listed)}
