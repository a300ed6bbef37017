"""The default model family: hand-built features -> one linear difficulty score -> Platt -> P(strong needed).

Training target. The router needs a ranking by "does the strong model do better here". Trained on
that label directly (strong beats weak, or the gain strong - weak), models learn which *topics* or
*tasks* had a big gap and transfer worse than prompt length to unseen ones (RESULTS.md sections 1-3,
and again in section 10 with five files). What transfers is *difficulty*: how hard the prompt is for
models in general, estimated from every model measured on it (``classifiers.labels``) and
standardised within each file's model set. A ridge regression on standardised features fits it.

Each domain (MMLU subject, MMLU-Pro category, LLMRouter task, the MATH file) gets the same total
weight, so no single large domain (professional law, MMLU-Pro physics) decides the weights alone.

Features that the training data cannot teach keep weight zero instead of whatever noise would give
them: ``features.CONTEXT_FEATURES`` (every training row is a single user turn without tools) and any
feature that differs from its most common value in under 1% of the rows (``MIN_SUPPORT``).

Inputs are clipped to the training range before the linear step (a linear model extrapolates without
limit: an empty request or a 1 MB prompt must not get an extreme score). After the fit, a
one-dimensional Platt step maps the score onto P(strong beats weak) using out-of-fold scores; it is
folded into the coefficients, so the exported model is still one clipped linear map and a sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifiers import labels
from classifiers.dataset import OutcomeData
from classifiers.features import CONTEXT_FEATURES, FEATURE_NAMES

ALPHA = 10000.0
LABEL = "irt"
MIN_SUPPORT = 0.01
# Kept out of the default fit by the grouped-CV selection (RESULTS.md section 10): the first-word request
# type adds nothing across domains (exam questions are nearly all "which ..."/"what ..."). A model
# learned on a deployment's traffic may still weight them.
DEFAULT_DROP = ("ask_fact", "ask_explain", "ask_produce")


@dataclass(frozen=True)
class LinearScore:
    """logit = (clip(x, lo, hi) - center) . coef + intercept, in raw feature units.

    Centred (at the training mean) so the float32 graph does not add large terms that cancel.
    """

    coef: np.ndarray
    intercept: float
    lo: np.ndarray
    hi: np.ndarray
    center: np.ndarray

    def decision(self, X: np.ndarray) -> np.ndarray:
        return (np.clip(np.asarray(X, np.float64), self.lo, self.hi) - self.center) @ self.coef + self.intercept

    def calibrated(self, a: float, b: float) -> LinearScore:
        """The same map followed by ``a * logit + b`` (a > 0 keeps the ranking)."""
        return LinearScore(self.coef * a, self.intercept * a + b, self.lo, self.hi, self.center)


def balanced_weights(groups: np.ndarray, collections: np.ndarray | None = None) -> np.ndarray:
    """Sample weights, mean 1: each group the same total weight, or (with ``collections``) each
    collection the same total weight, split equally among its groups."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    if collections is not None:
        for c in np.unique(collections):
            m = collections == c
            weights[m] /= weights[m].sum()
    return weights * (len(groups) / weights.sum())


def target(data: OutcomeData, label: str) -> np.ndarray:
    """The regression target of one label kind, computed from these rows only."""
    if label in ("irt", "mean_failure"):
        return labels.difficulty(data.model_scores, data.collections, label)
    if label == "pair":
        return labels.within_source_z(labels.pair_failure(data.weak, data.strong), data.collections)
    if label == "gap":
        return data.strong - data.weak
    raise ValueError(f"unknown label {label!r}")


def _usable(X: np.ndarray, drop: tuple[str, ...]) -> np.ndarray:
    """Columns the fit may weight: not a context feature, not dropped, and seen away from their most
    common value in at least ``MIN_SUPPORT`` of the training rows. A feature the data barely shows (a
    request type 40 of 20,000 rows have) would get its weight from a handful of rows of one file."""
    names = np.array(FEATURE_NAMES)
    mode = np.array([np.bincount(np.unique(col, return_inverse=True)[1]).max() for col in X.T]) / len(X)
    return ~np.isin(names, CONTEXT_FEATURES + drop) & (1.0 - mode >= MIN_SUPPORT)


def fit_linear(X: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float = ALPHA,
               drop: tuple[str, ...] = (), free: tuple[str, ...] = ()) -> LinearScore:
    """Weighted ridge regression of ``y`` on standardised features; closed form, so deterministic.

    ``free`` features are not penalised: the fit keeps their full slope and shrinks the rest towards it.
    """
    X = np.asarray(X, np.float64)
    use = _usable(X, drop)
    mu = np.average(X, axis=0, weights=weights)
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=weights))
    Z = (X[:, use] - mu[use]) / sd[use]
    ybar = float(np.average(y, weights=weights))
    Zw = Z * weights[:, None]
    penalty = np.where(np.isin(np.array(FEATURE_NAMES)[use], free), 1e-6, alpha)
    beta = np.linalg.solve(Z.T @ Zw + np.diag(penalty), Zw.T @ (y - ybar))
    coef = np.zeros(X.shape[1])
    coef[use] = beta / sd[use]
    return LinearScore(coef, ybar, X.min(axis=0), X.max(axis=0), mu)


def fit_pair_logistic(X: np.ndarray, weak: np.ndarray, strong: np.ndarray, weights: np.ndarray,
                      C: float = 0.001, drop: tuple[str, ...] = ()) -> LinearScore:
    """Round 3's recipe, for comparison: z-scored sum of logistic fits of "weak fails" and "strong fails"."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X, np.float64)
    use = _usable(X, drop)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    Z = (X[:, use] - mu[use]) / sd[use]
    beta, intercept = np.zeros(int(use.sum())), 0.0
    for label in (np.asarray(weak) < 0.5, np.asarray(strong) < 0.5):
        lr = LogisticRegression(C=C, max_iter=5000).fit(Z, label.astype(int), sample_weight=weights)
        logit = lr.decision_function(Z)
        beta += lr.coef_[0] / logit.std()
        intercept += (float(lr.intercept_[0]) - logit.mean()) / logit.std()
    coef = np.zeros(X.shape[1])
    coef[use] = beta / sd[use]
    return LinearScore(coef, intercept, X.min(axis=0), X.max(axis=0), mu)


def strong_needed(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Calibration label: 1 where the strong model did strictly better than the weak one."""
    return (np.asarray(strong) > np.asarray(weak)).astype(np.int64)


def fit_platt(logit: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(a, b) of P(label) = sigmoid(a * logit + b), fitted on out-of-fold logits by Newton's method.

    The slope is kept positive so calibration can never reverse the ranking the CV measured.
    """
    x = np.asarray(logit, np.float64)
    y = np.asarray(label, np.float64)
    a, b = 0.0, float(np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6)))
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1 - p) + 1e-12
        g = np.array([np.sum((y - p) * x), np.sum(y - p)])
        H = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(H, g)
        a, b = a + float(step[0]), b + float(step[1])
        if np.max(np.abs(step)) < 1e-10:
            break
    return max(a, 1e-6), b
