"""The promotion gate: a team's new model serves only if it beats the one serving on judged rows it never saw,
by more than noise.

Held-out rows are the most recent 25% by time (not nested CV): the candidate is fitted on the older 75% and
both it and the current model (the team's active model, or the default prior) are scored on the newer 25%.
Time order is what production does to a model (it serves traffic that comes after its training rows, and
traffic drifts), and it costs one fit instead of K. The candidate registered is that fit, so the metrics
stored with it are the ones it was judged by. It is promoted only if its APGR on the held-out rows beats the
current model's by ``margin`` with at least ``min_holdout`` held-out rows AND the lower bound of a paired
bootstrap interval of the difference (``confidence``, two-sided) is above 0; otherwise it stays a candidate and
``reason`` says why.

Why the bootstrap: APGR on 50-100 rows moves by several hundredths between samples of the same traffic, so a
fixed margin alone promoted models that were worse on the traffic that followed (benchmarks/replay/RESULTS.md,
findings 5 and 6). Resampling the held-out rows (the same rows for both models: paired, so what the two models
share cancels) measures that noise on the rows at hand instead of guessing it. It is seeded, so the same rows and
seed give the same verdict and the same registered bytes. The same interval decides the watch's rollbacks
(``compare``/``worse``; ``pipeline.team_models.watch``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers import metrics
from classifiers.gate import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT
from classifiers.learn import Outcomes, feature_matrix, learn
from classifiers.scorer import ComplexityScorer

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_MARGIN", "DEFAULT_MIN_HOLDOUT", "Difference", "Verdict", "apgr",
           "compare", "judge", "model_inputs", "paired_difference", "resampled_apgr", "subset", "worse"]

HOLDOUT_SHARE = 0.25
RESAMPLES = 400  # bootstrap resamples: the 10th/90th percentiles move by ~0.002 APGR between seeds at 400
_CELLS = 1 << 21  # resamples x rows per block: bounds the bootstrap's memory (~16 MB a matrix) for any row count


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    model: bytes  # the candidate's ONNX bytes (fitted on the older rows)
    model_id: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Difference:
    """APGR(new) - APGR(old) on the same rows, and its paired-bootstrap interval (None when the bootstrap is off,
    ``confidence`` 0, or fewer than half the resamples had a defined PGR)."""

    new: float
    old: float
    n: int
    confidence: float
    resamples: int  # resamples with a defined PGR (the others are skipped)
    drawn: int  # resamples drawn
    low: float | None
    high: float | None

    @property
    def observed(self) -> float:
        return self.new - self.old

    def to_dict(self) -> dict[str, Any]:
        interval = None if self.low is None or self.high is None else [round(self.low, 6), round(self.high, 6)]
        return {"difference": round(self.observed, 6), "confidence": self.confidence, "interval": interval,
                "resamples": self.resamples, "drawn": self.drawn, "n": self.n}

    def interval_text(self) -> str:
        if self.low is None or self.high is None:
            return "no bootstrap interval" if self.confidence <= 0 else \
                f"no bootstrap interval ({self.resamples} of {self.drawn} resamples had a defined PGR)"
        return (f"{self.confidence:.0%} bootstrap interval [{self.low:+.4f}, {self.high:+.4f}] over {self.n} rows, "
                f"{self.resamples} resamples")


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


def resampled_apgr(score: np.ndarray, weak: np.ndarray, strong: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """APGR of ``score`` on each resampled row set, ``counts[b, i]`` = how often row i is drawn in resample b; nan
    where PGR is undefined (the strong tier not better on average). Equals ``metrics.evaluate(...).apgr`` of the
    expanded rows (tests/test_promotion_gate.py checks it), without expanding or sorting each resample.

    Why it is closed-form: with ties averaged as ``metrics.routing_curve`` does (a tie group is a straight line),
    the area under the PGR curve is ``sum_i gain_i * (n - above_i - tied_i / 2) / (n * sum_i gain_i)``, where
    above_i counts the drawn rows scoring higher than row i and tied_i those scoring the same (its own copies
    included). So one sort of the original rows serves every resample: per tie group, counts and gains are column
    sums, ``above`` is their running total.
    """
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ordered = np.asarray(score, dtype=np.float64)[order]
    gain = (np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64))[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(ordered))[0] + 1])
    c = counts[:, order]
    tied = np.add.reduceat(c, starts, axis=1)
    gains = np.add.reduceat(c * gain, starts, axis=1)
    above = np.cumsum(tied, axis=1) - tied
    n = c.sum(axis=1)
    total = gains.sum(axis=1)
    area = (gains * (n[:, None] - above - tied / 2.0)).sum(axis=1)
    out = np.full(len(c), np.nan)
    defined = total > 0
    out[defined] = area[defined] / (n[defined] * total[defined])
    return out


def paired_difference(new: np.ndarray, old: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                      confidence: float = DEFAULT_CONFIDENCE, seed: int = 0, resamples: int = RESAMPLES) -> Difference:
    """APGR(new scores) - APGR(old scores) on the rows and a seeded paired-bootstrap percentile interval of it
    (rows drawn with replacement, the same draw for both models; resamples whose PGR is undefined skipped)."""
    weak, strong = np.asarray(weak, dtype=np.float64), np.asarray(strong, dtype=np.float64)
    a, b = metrics.evaluate(new, weak, strong).apgr, metrics.evaluate(old, weak, strong).apgr
    n = len(weak)
    if confidence <= 0 or n == 0:
        return Difference(a, b, n, confidence, 0, 0, None, None)
    rng = np.random.default_rng(seed)
    block = max(1, _CELLS // n)
    diffs = []
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        diffs.append(resampled_apgr(new, weak, strong, counts) - resampled_apgr(old, weak, strong, counts))
    d = np.concatenate(diffs)
    d = d[~np.isnan(d)]
    if len(d) * 2 < resamples:
        return Difference(a, b, n, confidence, len(d), resamples, None, None)
    low, high = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Difference(a, b, n, confidence, len(d), resamples, float(low), float(high))


def compare(new: bytes, old: bytes, data: Outcomes, confidence: float = DEFAULT_CONFIDENCE,
            seed: int = 0) -> Difference:
    """Two models' APGR difference on the same judged rows (the watch: a promoted model against the one it
    replaced, on rows neither was fitted on)."""
    a, b = ComplexityScorer(new), ComplexityScorer(old)
    return paired_difference(a.logits(model_inputs(a, data)), b.logits(model_inputs(b, data)), data.weak,
                             data.strong, confidence, seed)


def worse(diff: Difference, margin: float = DEFAULT_MARGIN) -> bool:
    """The watch's rule: the new model is worse than the old beyond noise. With the bootstrap on, the interval's
    upper bound is below 0 (the mirror of the gate's lower bound above 0: a worse model is reverted even when it
    loses by less than the margin, because the margin is the price of a change and the old model already served);
    with it off (confidence 0), the observed difference is at most -margin."""
    if not math.isfinite(diff.observed):
        return False
    if diff.confidence <= 0:
        return diff.observed <= -margin
    return diff.high is not None and diff.high < 0


def judge(data: Outcomes, current: bytes, seed: int = 0, margin: float = DEFAULT_MARGIN,
          min_holdout: int = DEFAULT_MIN_HOLDOUT, prior_path: str | Path | None = None,
          confidence: float = DEFAULT_CONFIDENCE) -> Verdict:
    """Fit a candidate on the older rows (``data`` is in time order, oldest first) and judge it on the newer.

    ``current`` is the serving model's bytes (the team's active version, or the default prior's). ``seed`` seeds
    both the fit and the bootstrap. Raises ``LearnError`` when the older rows cannot train a model (too few, one
    class).
    """
    n = len(data.ids)
    n_hold = math.ceil(HOLDOUT_SHARE * n)
    fit, held = subset(data, np.arange(n - n_hold)), subset(data, np.arange(n - n_hold, n))
    with tempfile.TemporaryDirectory() as tmp:
        result = learn(fit, Path(tmp) / "candidate.onnx", prior_path=prior_path, seed=seed)
        model = result.path.read_bytes()
    candidate, serving = ComplexityScorer(model), ComplexityScorer(current)
    diff = paired_difference(candidate.logits(model_inputs(candidate, held)),
                             serving.logits(model_inputs(serving, held)), held.weak, held.strong,
                             confidence if n_hold >= min_holdout else 0.0, seed)
    new, old = diff.new, diff.old
    found = {"holdout": "most recent 25% by time", "n_rows": n, "n_fit": n - n_hold, "n_holdout": n_hold,
             "holdout_apgr": {"candidate": round(new, 6), "current": round(old, 6)},
             "current_model_id": serving.model_id,
             "cv_apgr": {"model": round(result.cv_model.apgr, 6), "prior": round(result.prior.apgr, 6),
                         "length": round(result.length.apgr, 6)},
             "margin": margin, "min_holdout": min_holdout, "confidence": confidence, "bootstrap": diff.to_dict()}
    promote = False
    if n_hold < min_holdout:
        reason = f"only {n_hold} held-out rows; the gate needs {min_holdout}"
    elif not (math.isfinite(new) and math.isfinite(old)):
        reason = "PGR is undefined on the held-out rows (the strong tier is not better on average): nothing to judge"
    elif new < old + margin:
        reason = f"held-out APGR {new:.4f} does not beat the current model's {old:.4f} by {margin}"
    elif confidence > 0 and (diff.low is None or diff.low <= 0):
        reason = (f"held-out APGR {new:.4f} beats the current model's {old:.4f} by {new - old:.4f} (>= {margin}), "
                  f"but not beyond noise: {diff.interval_text()} of the difference does not exclude 0")
    else:
        reason = f"held-out APGR {new:.4f} beats the current model's {old:.4f} by {new - old:.4f} (>= {margin})"
        reason += f"; {diff.interval_text()} of the difference" if confidence > 0 else "; bootstrap off"
        promote = True
    return Verdict(promote, reason, model, candidate.model_id, found)
