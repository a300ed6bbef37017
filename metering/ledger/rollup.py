"""Rollup deltas: the aggregates a batch of newly inserted records adds, computed once in Python for both backends.

Only records the database actually inserted are rolled up (a replayed spool line whose entry is already
stored adds nothing), which is what makes spool replay idempotent.
"""

from __future__ import annotations

from collections.abc import Iterable

from metering.record import UsageRecord

MEASURES: tuple[str, ...] = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nanos",
    "counterfactual_cost_nanos",
)
DAILY_DIMS: tuple[str, ...] = ("day", "team", "key_id", "model", "tier", "purpose", "api")
TAG_DIMS: tuple[str, ...] = ("day", "team", "tag_key", "tag_value")

# Sums per key: DAILY_DIMS (or TAG_DIMS) values -> MEASURES, in order.
Deltas = dict[tuple[str, ...], list[int]]


def _measures(r: UsageRecord) -> tuple[int, ...]:
    return (1, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cache_write_tokens, r.reasoning_tokens,
            r.cost_nanos, r.counterfactual_cost_nanos)


def _add(acc: Deltas, key: tuple[str, ...], values: tuple[int, ...]) -> None:
    row = acc.get(key)
    if row is None:
        acc[key] = list(values)
    else:
        for i, v in enumerate(values):
            row[i] += v


def rollup(records: Iterable[UsageRecord]) -> tuple[Deltas, Deltas]:
    """Per-(day, team, key, model, tier, purpose, api) and per-(day, team, tag key, tag value) sums.

    Returned sorted by key, so concurrent writers (several proxies on one PostgreSQL) lock rollup rows in the same
    order and cannot deadlock each other.
    """
    daily: Deltas = {}
    tags: Deltas = {}
    for r in records:
        values = _measures(r)
        day = r.day.isoformat()
        _add(daily, (day, r.team, r.key_id, r.model, r.tier, r.purpose, r.api), values)
        for k, v in r.tags.items():
            _add(tags, (day, r.team, k, v), values)
    return dict(sorted(daily.items())), dict(sorted(tags.items()))
