"""The shipped model family: standardised hand-built features -> one logistic regression.

Training target. The router needs a ranking by "does the strong model do better here". Trained on
that label directly (strong beats weak, or the gain strong - weak), models on this data learn which
*topics* had a big gap and transfer worse than prompt length to unseen topics. What transfers is
*difficulty*: the model adds the (z-scored) logits of two fits, "the weak model fails" and "the
strong model fails", i.e. it ranks by how hard the prompt is for models in general. That beat the
weak-only and strong-only labels and all gain-based labels under subject-grouped CV
(benchmarks/classifier/RESULTS.md; round 2 replaced round 1's stacked "a model fails" fit).

Each subject gets the same total weight, so the 1,534 professional-law rows (20% of the data) do
not decide the weights alone; strong L2 regularisation keeps them small, since there are only
~28 subjects' worth of independent signal.

After the fit, a one-dimensional Platt step maps the logit onto P(strong beats weak) using
out-of-fold predictions and is folded into the coefficients, so the score reads as "probability
the strong tier is needed" without changing the ranking the CV measured.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

C = 0.001


def fails(quality: np.ndarray) -> np.ndarray:
    """1 where a model's quality is below one half (a wrong MMLU answer)."""
    return (np.asarray(quality) < 0.5).astype(np.int64)


def strong_needed(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Calibration label: 1 where the strong model did strictly better than the weak one."""
    return (np.asarray(strong) > np.asarray(weak)).astype(np.int64)


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Sample weights giving each group the same total weight, mean 1."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return weights * (len(groups) / weights.sum())


def fit(X: np.ndarray, weak: np.ndarray, strong: np.ndarray, groups: np.ndarray, seed: int = 0) -> Pipeline:
    """Fit the difficulty model: the sum of two z-scored logits, P(weak fails) and P(strong fails).

    Two logistic regressions on the same standardised features, one per model's failure; each
    logit is standardised over the training rows (so neither model's scale dominates) and the two
    are added. The sum is still linear in the features, so it is folded into one logistic head
    and exports as before. Round 2 in RESULTS.md: chosen by nested grouped CV over round 1's
    stacked "a model fails" fit and this average.
    """
    weights = group_balanced_weights(groups)
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    coef = np.zeros(X.shape[1])
    intercept = 0.0
    heads = []
    for label in (fails(weak), fails(strong)):
        lr = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(Z, label, sample_weight=weights)
        logit = lr.decision_function(Z)
        mean, std = float(logit.mean()), float(logit.std())
        coef += lr.coef_[0] / std
        intercept += (float(lr.intercept_[0]) - mean) / std
        heads.append(lr)
    head = heads[0]
    head.coef_ = coef.reshape(1, -1)
    head.intercept_ = np.array([intercept])
    return Pipeline([("scale", scaler), ("lr", head)])


def decision(model: Pipeline, X: np.ndarray) -> np.ndarray:
    """The logit the score is a monotone function of."""
    return model.decision_function(X)


def fit_platt(logit: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(a, b) of P(label) = sigmoid(a * logit + b), fitted on out-of-fold logits.

    The slope is kept positive so calibration can never reverse the ranking the CV measured.
    """
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit.reshape(-1, 1), label)
    return max(float(lr.coef_[0, 0]), 1e-6), float(lr.intercept_[0])


def fold_platt(model: Pipeline, a: float, b: float) -> None:
    """Rewrite the fitted logistic head so predict_proba returns sigmoid(a * logit + b)."""
    lr: LogisticRegression = model.named_steps["lr"]
    lr.coef_ = lr.coef_ * a
    lr.intercept_ = lr.intercept_ * a + b
