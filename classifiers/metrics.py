"""RouteLLM routing metrics (APGR, CPT) for a score against measured weak/strong outcomes.

The same definitions as ``shared/tools/route_eval.py`` (exact piecewise-linear curve, ties grouped so
a constant score gives APGR 0.5), reimplemented here so training and calibration work from the repo
alone. ``tests/test_classifier_training.py`` cross-checks the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoutingMetrics:
    """Summary of one routing curve. CPT values are strong-call fractions in [0, 1] (nan if never reached)."""

    apgr: float
    cpt50: float
    cpt80: float
    n: int


def routing_curve(score: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (x = strong-call fraction, q = mean quality) sweeping the threshold from high to low.

    Equal scores switch to the strong model together, so the curve is linear across a tie group:
    the expected curve under random tie-breaking.
    """
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    order = np.argsort(-score, kind="stable")
    gain = (np.asarray(strong, float) - np.asarray(weak, float))[order]
    ends = np.concatenate([np.nonzero(np.diff(score[order]))[0] + 1, [n]])
    cum_gain = np.concatenate([[0.0], np.cumsum(gain)])
    k = np.concatenate([[0], ends])
    q = (np.sum(weak) + cum_gain[k]) / n
    return k / n, q


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest x where the piecewise-linear curve reaches ``target`` (nan if it never does)."""
    if y[0] >= target:
        return float(x[0])
    hit = np.nonzero(y >= target)[0]
    if len(hit) == 0:
        return float("nan")
    j = int(hit[0])
    y0, y1 = y[j - 1], y[j]
    t = 0.0 if y1 == y0 else (target - y0) / (y1 - y0)
    return float(x[j - 1] + t * (x[j] - x[j - 1]))


def evaluate(score: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> RoutingMetrics:
    """APGR and CPT(50%), CPT(80%) of ``score`` (higher = send to strong)."""
    weak = np.asarray(weak, dtype=np.float64)
    strong = np.asarray(strong, dtype=np.float64)
    qw, qs = float(weak.mean()), float(strong.mean())
    if qs <= qw:
        nan = float("nan")
        return RoutingMetrics(nan, nan, nan, len(weak))
    x, q = routing_curve(score, weak, strong)
    pgr = (q - qw) / (qs - qw)
    apgr = float(np.sum((x[1:] - x[:-1]) * (pgr[1:] + pgr[:-1]) / 2.0))
    # The 1e-12 slack matches route_eval.py, so an exact 0.5 PGR counts as reached.
    return RoutingMetrics(apgr, first_crossing(x, pgr, 0.5 - 1e-12), first_crossing(x, pgr, 0.8 - 1e-12), len(weak))
