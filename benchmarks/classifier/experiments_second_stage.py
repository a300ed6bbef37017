"""Second stage on the difficulty logits: can a low-dimensional map from "how hard" to "how much the strong model
gains" capture MMLU's inverted U (RESULTS.md section 3, point 4)? Not shipped: see RESULTS.md section 7.

    .venv/bin/python benchmarks/classifier/experiments_second_stage.py      # ~6 min on one core

Same protocol as the other experiment scripts (MMLU DEV only, one subject held out per fold, pooled out-of-fold
scores). The second stage is fitted on *inner* out-of-fold logits of the training subjects only, so the held-out
subject never shapes it. All six variants are reported; the best row is picked on test (optimistic).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from classifiers import cv, dataset, model  # noqa: E402
from classifiers.features import featurize_many, split_request  # noqa: E402
from metering.tokens import count_text  # noqa: E402

DATA = dataset.load(REPO / "classifiers/data/mmlu_dev.jsonl", for_training=True)
X = featurize_many(DATA.messages)
G, WEAK, STRONG = DATA.groups, DATA.weak, DATA.strong
LENGTH = np.array([count_text(split_request(m)[0]) for m in DATA.messages], dtype=np.float64)


def difficulty_logits(train: np.ndarray, X_out: np.ndarray) -> np.ndarray:
    """The shipped model's two z-scored logits (weak fails, strong fails), fitted on ``train``, for ``X_out``."""
    weights = model.group_balanced_weights(G[train])
    scaler = StandardScaler().fit(X[train])
    Z = scaler.transform(X[train])
    out = []
    for label in (model.fails(WEAK[train]), model.fails(STRONG[train])):
        lr = LogisticRegression(C=model.C, max_iter=5000).fit(Z, label, sample_weight=weights)
        logit = lr.decision_function(Z)
        out.append((lr.decision_function(scaler.transform(X_out)) - logit.mean()) / logit.std())
    return np.stack(out, axis=1)


def expand(L: np.ndarray, kind: str) -> np.ndarray:
    a, b = L[:, 0], L[:, 1]
    if kind == "lin":
        return L
    if kind == "quad":
        return np.stack([a, b, a * a, b * b, a * b], axis=1)
    s = a + b  # "quad_sum": a parabola in the shipped score
    return np.stack([s, s * s], axis=1)


def second_stage(kind: str, label: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        rows = np.where(train)[0]
        inner = np.zeros((len(rows), 2))
        for subject in sorted(set(G[rows].tolist())):
            held = G[rows] == subject
            inner_train = train.copy()
            inner_train[rows[held]] = False
            inner[held] = difficulty_logits(inner_train, X[rows[held]])
        F = expand(inner, kind)
        weights = model.group_balanced_weights(G[rows])
        F_test = expand(difficulty_logits(train, X[test]), kind)
        if label == "beats":
            head = LogisticRegression(C=1.0, max_iter=2000)
            head.fit(F, model.strong_needed(WEAK[rows], STRONG[rows]), sample_weight=weights)
            return head.decision_function(F_test)
        head = Ridge(alpha=1.0).fit(F, STRONG[rows] - WEAK[rows], sample_weight=weights)
        return head.predict(F_test)
    return fit_predict


def deciles() -> None:
    """Mean gain per decile of the shipped score (fitted on all rows): where the inverted U peaks."""
    score = difficulty_logits(np.ones(len(G), bool), X).sum(axis=1)
    order = np.argsort(score)
    print("\n| decile of shipped score | mean gain | weak fails | strong fails |\n|---:|---:|---:|---:|")
    for k in range(10):
        idx = order[k * len(order) // 10:(k + 1) * len(order) // 10]
        print(f"| {k + 1} | {(STRONG - WEAK)[idx].mean():.3f} | {(WEAK[idx] < .5).mean():.2f} | "
              f"{(STRONG[idx] < .5).mean():.2f} |")


def main() -> None:
    print("| score | APGR | CPT(50%) | CPT(80%) | wins vs length |\n|---|---:|---:|---:|---:|")
    candidates = [("shipped (z-scored logit sum)", lambda tr, te: difficulty_logits(tr, X[te]).sum(axis=1))]
    candidates += [(f"second stage {kind} -> {label}", second_stage(kind, label))
                   for kind in ("lin", "quad_sum", "quad") for label in ("beats", "gain")]
    for name, fit_predict in candidates:
        r = cv.report(cv.out_of_fold(fit_predict, G), LENGTH, WEAK, STRONG, G)
        print(f"| {name} | {r.pooled.apgr:.3f} | {r.pooled.cpt50:.1%} | {r.pooled.cpt80:.1%} | "
              f"{r.wins}/{len(r.scored_folds)} |", flush=True)
    deciles()


if __name__ == "__main__":
    main()
