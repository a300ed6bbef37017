"""The promotion gate: a team's new model serves only if it beats the one serving on judged rows it never saw.

Held-out rows are the most recent 25% by time (not nested CV): the candidate is fitted on the older 75% and
both it and the current model (the team's active model, or the default prior) are scored on the newer 25%.
Time order is what production does to a model (it serves traffic that comes after its training rows, and
traffic drifts), and it costs one fit instead of K. The candidate registered is that fit, so the metrics
stored with it are the ones it was judged by. It is promoted only if its APGR on the held-out rows beats the
current model's by ``margin`` with at least ``min_holdout`` held-out rows; otherwise it stays a candidate
and ``reason`` says why.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers import metrics
from classifiers.gate import DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT
from classifiers.learn import Outcomes, feature_matrix, learn
from classifiers.scorer import ComplexityScorer

HOLDOUT_SHARE = 0.25


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    model: bytes  # the candidate's ONNX bytes (fitted on the older rows)
    model_id: str
    metrics: dict[str, Any]


def subset(data: Outcomes, rows: np.ndarray) -> Outcomes:
    idx = [int(i) for i in rows]
    features = tuple(data.features[i] for i in idx) if data.features else ()
    return Outcomes([data.ids[i] for i in idx], [data.messages[i] for i in idx], data.weak[rows], data.strong[rows],
                    features)


def model_inputs(scorer: ComplexityScorer, data: Outcomes) -> np.ndarray:
    """``scorer``'s input matrix for the rows: features-only rows get an all-zero word block (their words are
    unknown), rows with text get their computed one."""
    X = feature_matrix(data)
    if scorer.vocabulary is None:
        return X
    words = np.zeros((len(X), len(scorer.vocabulary)))
    texts = [i for i, f in enumerate(data.features or [None] * len(X)) if f is None]
    if texts:
        words[texts] = scorer.features([data.messages[i] for i in texts])[:, X.shape[1]:]
    return np.hstack([X, words])


def apgr(scorer: ComplexityScorer, data: Outcomes) -> float:
    return metrics.evaluate(scorer.logits(model_inputs(scorer, data)), data.weak, data.strong).apgr


def judge(data: Outcomes, current: bytes, seed: int = 0, margin: float = DEFAULT_MARGIN,
          min_holdout: int = DEFAULT_MIN_HOLDOUT, prior_path: str | Path | None = None) -> Verdict:
    """Fit a candidate on the older rows (``data`` is in time order, oldest first) and judge it on the newer.

    ``current`` is the serving model's bytes (the team's active version, or the default prior's). Raises
    ``LearnError`` when the older rows cannot train a model (too few, one class).
    """
    n = len(data.ids)
    n_hold = math.ceil(HOLDOUT_SHARE * n)
    fit, held = subset(data, np.arange(n - n_hold)), subset(data, np.arange(n - n_hold, n))
    with tempfile.TemporaryDirectory() as tmp:
        result = learn(fit, Path(tmp) / "candidate.onnx", prior_path=prior_path, seed=seed)
        model = result.path.read_bytes()
    candidate, serving = ComplexityScorer(model), ComplexityScorer(current)
    new, old = apgr(candidate, held), apgr(serving, held)
    found = {"holdout": "most recent 25% by time", "n_rows": n, "n_fit": n - n_hold, "n_holdout": n_hold,
             "holdout_apgr": {"candidate": round(new, 6), "current": round(old, 6)},
             "current_model_id": serving.model_id,
             "cv_apgr": {"model": round(result.cv_model.apgr, 6), "prior": round(result.prior.apgr, 6),
                         "length": round(result.length.apgr, 6)},
             "margin": margin, "min_holdout": min_holdout}
    if n_hold < min_holdout:
        reason = f"only {n_hold} held-out rows; the gate needs {min_holdout}"
        promote = False
    elif new < old + margin:
        reason = f"held-out APGR {new:.4f} does not beat the current model's {old:.4f} by {margin}"
        promote = False
    else:
        reason = f"held-out APGR {new:.4f} beats the current model's {old:.4f} by {new - old:.4f} (>= {margin})"
        promote = True
    return Verdict(promote, reason, model, candidate.model_id, found)
