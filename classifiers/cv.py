"""Grouped cross-validation: each fold holds out one whole domain (an MMLU subject, an MMLU-Pro category,
an LLMRouter task, the MATH file).

The router will meet kinds of requests it never saw, so a score is only judged on domains it was not
fitted on. The same question can sit in two files (``meta.dev_duplicates``: MMLU-Pro repeats 3,768
MMLU questions); a fold never trains on a copy of a question it tests on. Out-of-fold scores are
evaluated per source and per domain with RouteLLM's metrics, next to the prompt-length baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    sources: dict[str, tuple[RoutingMetrics, RoutingMetrics]]  # source -> (model, length baseline), pooled OOF
    folds: list[FoldResult]

    @property
    def scored_folds(self) -> list[FoldResult]:
        """Folds where PGR is defined (the strong model beats the weak one on average there)."""
        return [f for f in self.folds if np.isfinite(f.apgr)]

    @property
    def wins(self) -> int:
        return sum(f.apgr > f.baseline_apgr for f in self.scored_folds)

    @property
    def mean_source_apgr(self) -> float:
        """Unweighted mean over sources of the pooled out-of-fold APGR: the selection criterion."""
        values = [m.apgr for m, _ in self.sources.values() if np.isfinite(m.apgr)]
        return float(np.mean(values)) if values else float("nan")


def train_mask(test: np.ndarray, ids: list[str], duplicates: list[tuple[str, ...]]) -> np.ndarray:
    """Rows a fold may train on: not in ``test`` and not a copy of a test row (in either direction)."""
    keep = ~test
    test_rows = np.nonzero(test)[0]
    test_ids = {ids[i] for i in test_rows}
    linked = {d for i in test_rows for d in duplicates[i]}
    for i, dups in enumerate(duplicates):
        if keep[i] and (ids[i] in linked or (dups and not test_ids.isdisjoint(dups))):
            keep[i] = False
    return keep


def out_of_fold(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    groups: np.ndarray,
    ids: list[str],
    duplicates: list[tuple[str, ...]],
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> np.ndarray:
    """Pooled out-of-fold predictions. ``fit_predict(train_mask, test_mask)`` returns scores for the test rows."""
    oof = np.zeros(len(groups))
    for group in progress(sorted(set(groups.tolist()))):
        test = groups == group
        oof[test] = fit_predict(train_mask(test, ids, duplicates), test)
    return oof


def report(
    oof: np.ndarray, baseline: np.ndarray, weak: np.ndarray, strong: np.ndarray, groups: np.ndarray, sources: np.ndarray
) -> CVReport:
    """Pooled metrics per source of ``oof`` and of ``baseline``, and per-domain APGR of both."""
    per_source = {}
    for source in sorted(set(sources.tolist())):
        m = sources == source
        per_source[source] = (evaluate(oof[m], weak[m], strong[m]), evaluate(baseline[m], weak[m], strong[m]))
    folds = []
    for group in sorted(set(groups.tolist())):
        m = groups == group
        folds.append(
            FoldResult(group, int(m.sum()), evaluate(oof[m], weak[m], strong[m]).apgr,
                       evaluate(baseline[m], weak[m], strong[m]).apgr)
        )
    return CVReport(per_source, folds)
