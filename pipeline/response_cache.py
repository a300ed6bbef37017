"""Exact response cache (opt-in per team) for deterministic requests: temperature 0 or a fixed seed.

Keyed by team and the normalised request (fields that do not change the answer are left out), stored with the
team's TTL in Redis or in process. A hit costs nothing upstream and is metered at zero cost.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Fields that do not change what the model answers.
_IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "prompt_cache_key", "store"})


def cacheable(body: dict[str, Any]) -> bool:
    if body.get("stream") or (body.get("n") or 1) != 1:
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(team: str, body: dict[str, Any]) -> str:
    normal = {k: v for k, v in body.items() if k not in _IGNORED}
    digest = hashlib.sha256(orjson.dumps([team, normal], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"resp:{digest}"
