"""Pick the score threshold that reaches a target on a dataset, as RouteLLM's ``calibrate`` does.

Policy semantics: a request whose score is >= a tier's threshold may go to that tier, and goes to
the most capable such tier; so here "routed to strong" means ``score >= threshold``.
"""

from __future__ import annotations

import math

import numpy as np

# Printed thresholds are floored to this many decimals, so every request counted as routed to the
# strong tier here still reaches the printed (rounded) threshold.
DECIMALS = 6


def _floor(value: float) -> float:
    return math.floor(value * 10**DECIMALS) / 10**DECIMALS


def _above_all(scores: np.ndarray) -> float:
    """A threshold no request reaches (all traffic stays on the cheaper tier)."""
    return _floor(float(np.max(scores))) + 10**-DECIMALS


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """Threshold that sends about ``share`` of the requests (the highest-scoring ones) to the strong tier.

    Ties at the cut all go the same way, so the achieved share can be a little higher.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError("strong share must be in [0, 1]")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = round(share * len(ordered))
    return _above_all(ordered) if k == 0 else _floor(float(ordered[k - 1]))


def threshold_for_quality(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, fraction: float) -> float:
    """Highest threshold whose routed mean quality is >= ``fraction`` x the all-strong mean quality.

    Highest threshold = fewest strong calls. Requests with equal scores switch tier together, as
    they would under the policy.
    """
    scores = np.asarray(scores, dtype=np.float64)
    weak, strong = np.asarray(weak, float), np.asarray(strong, float)
    target = fraction * float(strong.mean())
    if weak.mean() >= target:
        return _above_all(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    quality = (weak.sum() + np.cumsum((strong - weak)[order])) / len(scores)
    # Only the last position of each tie group is a reachable cut.
    group_end = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    reached = np.nonzero(group_end & (quality >= target - 1e-12))[0]
    if len(reached) == 0:
        return _floor(float(sorted_scores[-1]))
    return _floor(float(sorted_scores[reached[0]]))


def strong_share(scores: np.ndarray, threshold: float) -> float:
    """Fraction of requests at or above ``threshold``."""
    return float(np.mean(np.asarray(scores) >= threshold))


def routed_quality(scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, threshold: float) -> float:
    """Mean quality when requests at or above ``threshold`` get the strong model."""
    return float(np.mean(np.where(np.asarray(scores) >= threshold, strong, weak)))


def policy_yaml(tier: str, threshold: float) -> str:
    """The policy fragment the router reads."""
    return f"routing:\n  thresholds:\n    {tier}: {threshold:.{DECIMALS}f}\n"
