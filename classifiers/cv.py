"""Grouped cross-validation: each fold holds out one whole group (an MMLU subject).

The router will meet topics it never saw, so a score is only judged on subjects it was not fitted
on. Out-of-fold scores are pooled and evaluated together (RouteLLM's metrics), and each fold is
also compared with the prompt-length baseline on that subject alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from classifiers.metrics import RoutingMetrics, evaluate


@dataclass(frozen=True)
class FoldResult:
    group: str
    n: int
    apgr: float
    baseline_apgr: float


@dataclass(frozen=True)
class CVReport:
    pooled: RoutingMetrics
    baseline: RoutingMetrics
    folds: list[FoldResult]

    @property
    def scored_folds(self) -> list[FoldResult]:
        """Folds where PGR is defined (the strong model beats the weak one on average there)."""
        return [f for f in self.folds if np.isfinite(f.apgr)]

    @property
    def wins(self) -> int:
        return sum(f.apgr > f.baseline_apgr for f in self.scored_folds)


def out_of_fold(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    groups: np.ndarray,
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> np.ndarray:
    """Pooled out-of-fold predictions. ``fit_predict(train_mask, test_mask)`` returns scores for the test rows."""
    oof = np.zeros(len(groups))
    for group in progress(sorted(set(groups.tolist()))):
        test = groups == group
        oof[test] = fit_predict(~test, test)
    return oof


def report(oof: np.ndarray, baseline: np.ndarray, weak: np.ndarray, strong: np.ndarray, groups: np.ndarray) -> CVReport:
    """Pooled metrics of ``oof`` and of ``baseline``, and per-fold APGR of both."""
    folds = []
    for group in sorted(set(groups.tolist())):
        m = groups == group
        folds.append(
            FoldResult(group, int(m.sum()), evaluate(oof[m], weak[m], strong[m]).apgr,
                       evaluate(baseline[m], weak[m], strong[m]).apgr)
        )
    return CVReport(evaluate(oof, weak, strong), evaluate(baseline, weak, strong), folds)
