"""The one percentile of the project: nearest rank.

The P-th percentile of ``n`` values is the value at rank ``ceil(P * n / 100)`` (1-based) of the sorted values: a
value that occurred, never an interpolation between two, the same as PostgreSQL's ``percentile_disc``. Why this
method: a token count or a latency that was never observed is no cap anyone can set, and the same rank is written
in portable SQL (``rank_sql``) so a percentile computed by the database (SQLite or PostgreSQL) is the one Python
computes over the same rows. Every percentile of values in the project (spend report, audit, anomalies, forecast
intervals, evidence bootstrap, upstream latency) goes through here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TypeVar, overload

V = TypeVar("V", int, float)


def rank(n: int, percentile: float) -> int:
    """The 1-based rank ``ceil(P * n / 100)`` (at least 1), exact for fractional P such as 2.5 or 97.5."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be from 0 to 100, got {percentile}")
    return max(1, math.ceil(Fraction(str(percentile)) * n / 100))


@overload
def nearest_rank(values: Mapping[V, int], percentile: float) -> V: ...
@overload
def nearest_rank(values: Iterable[V], percentile: float) -> V: ...
def nearest_rank(values: Mapping[V, int] | Iterable[V], percentile: float) -> V:
    """The ``percentile``-th percentile of ``values``: a sequence of observations, or a histogram ``{value: count}``
    (the same answer as the sequence holding each value ``count`` times). ValueError when there are none."""
    if isinstance(values, Mapping):
        counts = {v: c for v, c in values.items() if c > 0}
        want = rank(sum(counts.values()), percentile)
        seen = 0
        for value in sorted(counts):
            seen += counts[value]
            if seen >= want:
                return value
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take a percentile of")
    return ordered[rank(len(ordered), percentile) - 1]


def rank_sql(percentile: int, n: str) -> str:
    """``rank`` as an integer SQL expression over the count ``n`` (an integer column or expression), for a
    ``ROW_NUMBER()`` to match: the same on SQLite and PostgreSQL, whose integer division truncates."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be an integer from 1 to 100, got {percentile}")
    return f"(({percentile} * {n} + 99) / 100)"
