"""``tiergate learn``: fit a deployment's own routing model from its judged outcomes, on top of the default prior.

Input: routing-outcome rows (``id``, ``messages``, ``weak_score`` = the cheaper tier's grade,
``strong_score``). The new score is a ridge regression of the gain ``strong - weak`` on

- the prior's logit (and optionally its square: the gain is often an inverted U in difficulty, since
  prompts both tiers fail gain nothing from the strong one), unpenalised, so with few rows the model
  stays close to the prior;
- log length, unpenalised too: where the prior knows nothing about a deployment's traffic, length is
  the baseline to beat;
- the other standardised hand features (``classifiers.features``), penalised; on a deployment's
  traffic the conversation features (turns, context, tools) can get weight too;
- optionally a word block: one 0/1 column per word of the deployment's own vocabulary (up to 500
  frequent words of its rows). A public prior must not learn topics (they do not transfer between
  domains); a deployment's model should, since its traffic keeps coming back to the same ones. A
  vocabulary stored in the model rather than hashed n-grams: a dict lookup per word is cheaper than a
  stable hash, and there are no collisions.

Hyperparameters (the two penalties, the square term, or "keep the prior") are chosen by K-fold CV on
the given rows only, conservatively: a config replaces the prior only if it beats it fold by fold by
more than two standard errors. The printed APGR of the new model comes from nested CV (the choice re-made
inside each outer fold), so it is not flattered by the choice. A Platt step on the out-of-fold scores
maps the result to P(strong beats weak) on this traffic. The model is exported with the prior's graph
inside (``classifiers.export.stacked_model``), so the proxy and ``tiergate score --model`` load it as
any other model.

Deterministic: the folds come from ``seed``, every fit is closed form.

Features-only rows (``messages`` null, ``meta.features`` + ``meta.feature_names``: what the outcome store keeps
for a team that did not opt in to storing prompts) train the same model without the word block: the hand
features are the stored vector (reordered by name), log length is its ``log_chars`` column, and the prior's logit
is recomputed from those features by the prior model, since the exported graph computes it the same way at
serving time (``meta.prior_score``, logged by whatever model served then, is not used). A file mixing both kinds
trains without the word block too (its columns are unknown on the features-only rows), and the prompt-length
baseline is then ``log_chars`` on every row so all rows are ranked on one scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifiers import metrics, model
from classifiers.features import (
    FEATURE_NAMES,
    N_FEATURES,
    featurize_many,
    request_words,
    split_request,
)
from classifiers.model import LinearScore
from text.tokens import count_text

MIN_ROWS = 50
MIN_PER_CLASS = 5
FOLDS = 5
INNER_FOLDS = 3  # inside nested CV's outer folds
# Ridge penalties: on the standardised hand features, and on the word block (inf = no word block).
ALPHA_FEATURES = (3000.0, 300.0, 30.0)
ALPHA_WORDS = (math.inf, 100.0, 30.0)
# The word block: the deployment's own vocabulary, words of >= 3 letters found in >= 3 rows, at most 500.
VOCAB_MAX = 500
VOCAB_MIN_ROWS = 3
VOCAB_MIN_LEN = 3

MARGIN_SE = 2.0
FREE = 1.0  # the penalty of the prior logit and of log length: next to none against hundreds of rows
SD_FLOOR = 0.05  # smallest scale of a hand feature (a log count, a fraction or a rate per 100 chars)
PRIOR_SD_FLOOR = 0.1  # smallest scale of the prior logit
_LOG_CHARS = FEATURE_NAMES.index("log_chars")

# (alpha features, alpha words, square of the prior logit); the first entry = the prior alone.
Config = tuple[float, float, bool]
PRIOR_ONLY: Config = (math.inf, math.inf, False)
CONFIGS: tuple[Config, ...] = (PRIOR_ONLY,) + tuple(
    (af, aw, sq) for sq in (False, True) for aw in ALPHA_WORDS for af in ALPHA_FEATURES)


class LearnError(ValueError):
    """Input ``tiergate learn`` cannot use; the message is one line for the user."""


@dataclass(frozen=True)
class Outcomes:
    ids: list[str]
    messages: list[Any]
    weak: np.ndarray
    strong: np.ndarray
    # Per row: the stored hand-feature vector of a features-only row (``messages`` None), else None.
    features: tuple[np.ndarray | None, ...] = ()

    @property
    def features_only(self) -> bool:
        """True when some row has no prompt text: the model is then fitted without the word block."""
        return any(f is not None for f in self.features)


@dataclass(frozen=True)
class LearnResult:
    path: Path
    model_id: str
    size_bytes: int
    n: int
    counts: tuple[int, int, int]  # strong better, weak better, tie
    config: Config
    vocabulary_size: int
    cv_model: metrics.RoutingMetrics  # nested CV
    prior: metrics.RoutingMetrics
    length: metrics.RoutingMetrics


def _grade(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(key)
    return float(value)


def stored_features(meta: Any) -> np.ndarray:
    """The hand-feature vector of a features-only row, in ``FEATURE_NAMES`` order; ValueError saying what is wrong."""
    if not isinstance(meta, dict) or not isinstance(meta.get("features"), list) \
            or not isinstance(meta.get("feature_names"), list):
        raise ValueError("needs 'messages' (a list) or 'meta.features' with 'meta.feature_names'")
    names, values = meta["feature_names"], meta["features"]
    if len(names) != len(values):
        raise ValueError("'meta.features' and 'meta.feature_names' differ in length")
    by_name = dict(zip(names, values))
    missing = [n for n in FEATURE_NAMES if n not in by_name]
    if missing:
        raise ValueError(f"'meta.features' lacks {len(missing)} feature(s) this version computes "
                         f"(first: {missing[0]}); rows recorded by another feature set cannot be used")
    vector = [by_name[n] for n in FEATURE_NAMES]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector):
        raise ValueError("'meta.features' must be finite numbers")
    return np.array(vector, dtype=np.float64)


def read_outcomes(path: str | Path) -> Outcomes:
    """Validated rows of a JSONL file; raises LearnError naming the first bad line."""
    ids, messages, weak, strong, features = [], [], [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise LearnError(f"{path}:{number}: not valid JSON") from None
                if not isinstance(row, dict) or "id" not in row:
                    raise LearnError(f"{path}:{number}: needs an object with 'id' and a 'messages' list")
                vector = None
                if not isinstance(row.get("messages"), list):
                    try:
                        vector = stored_features(row.get("meta"))
                    except ValueError as exc:
                        raise LearnError(f"{path}:{number}: {exc}") from None
                try:
                    w, s = _grade(row, "weak_score"), _grade(row, "strong_score")
                except TypeError as exc:
                    raise LearnError(f"{path}:{number}: '{exc}' must be a finite number "
                                     "(both grades are required)") from None
                ids.append(str(row["id"]))
                messages.append(row["messages"] if vector is None else None)
                weak.append(w)
                strong.append(s)
                features.append(vector)
    except OSError as exc:
        raise LearnError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LearnError(f"{path}: not UTF-8 text") from None
    return Outcomes(ids, messages, np.array(weak), np.array(strong), tuple(features))


def check(data: Outcomes) -> tuple[int, int, int]:
    """(strong better, weak better, tie) counts; raises LearnError when the rows cannot train a router."""
    n = len(data.ids)
    if n < MIN_ROWS:
        raise LearnError(f"{n} row(s); at least {MIN_ROWS} judged rows are needed")
    if len(set(data.ids)) != n:
        raise LearnError("duplicate ids: every row must be a different request")
    better = int(np.sum(data.strong > data.weak))
    worse = int(np.sum(data.strong < data.weak))
    if better < MIN_PER_CLASS or n - better < MIN_PER_CLASS:
        raise LearnError(f"one class only: the strong tier is better on {better} of {n} rows; "
                         f"at least {MIN_PER_CLASS} rows where it is and {MIN_PER_CLASS} where it is not are needed")
    if data.strong.mean() <= data.weak.mean():
        raise LearnError("the strong tier is not better than the weak one on average on these rows: nothing to route")
    return better, worse, n - better - worse


def _folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number of each row: a random permutation cut into k near-equal parts."""
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % k
    return fold


def build_vocabulary(messages: list[Any]) -> tuple[str, ...]:
    """The word block's columns: frequent words of these requests (by rows containing them), alphabetical."""
    rows_with: Counter[str] = Counter()
    for m in messages:
        rows_with.update({w for w in request_words(m) if len(w) >= VOCAB_MIN_LEN})
    frequent = [w for w, c in rows_with.items() if c >= VOCAB_MIN_ROWS]
    return tuple(sorted(sorted(frequent, key=lambda w: (-rows_with[w], w))[:VOCAB_MAX]))


class _Design:
    """All columns a config may use, for every row: [prior logit, its square, hand features, words].

    The prior and the hand features are standardised over all rows (no labels involved), with a floor
    on the scale: a column that barely varies on this traffic (the prior on requests it cannot tell
    apart, float32 noise included) must not be blown up to unit variance and fitted as if it were
    signal. Centring happens per training fold in ``_Fold``. The prior is clipped to the range it had
    on these rows (as the features are), so a new request cannot extrapolate through it.
    """

    def __init__(self, X: np.ndarray, prior: np.ndarray, words: np.ndarray) -> None:
        self.mu, self.sd = X.mean(axis=0), np.maximum(X.std(axis=0), SD_FLOOR)
        self.use = X.std(axis=0) > 1e-9
        self.p_lo, self.p_hi = float(prior.min()), float(prior.max())
        self.p_mu, self.p_sd = float(prior.mean()), max(float(prior.std()), PRIOR_SD_FLOOR)
        p = (prior - self.p_mu) / self.p_sd
        Z = (X[:, self.use] - self.mu[self.use]) / self.sd[self.use]
        self.A = np.hstack([p[:, None], (p * p)[:, None], Z, words])
        d, k = Z.shape[1], words.shape[1]
        self.hand = np.arange(2, 2 + d)
        # Column of log length: unpenalised like the prior, so the model starts from "prior + length".
        used = np.nonzero(self.use)[0].tolist()
        self.length = 2 + used.index(_LOG_CHARS) if _LOG_CHARS in used else -1
        self.words = np.arange(2 + d, 2 + d + k)

    def columns(self, config: Config) -> tuple[np.ndarray, np.ndarray]:
        """(column indices, ridge penalty per column) of a config; the prior and log length are (nearly) free."""
        alpha_f, alpha_w, square = config
        cols = [np.array([0, 1] if square else [0]), self.hand]
        pens = [np.full(len(cols[0]), FREE), np.where(self.hand == self.length, FREE, alpha_f)]
        if not math.isinf(alpha_w) and len(self.words):
            cols.append(self.words)
            pens.append(np.full(len(self.words), alpha_w))
        return np.concatenate(cols), np.concatenate(pens)


class _Fold:
    """Centred normal equations of the training rows, computed once and shared by every config."""

    def __init__(self, design: _Design, gain: np.ndarray, train: np.ndarray) -> None:
        A = design.A[train]
        self.mean = A.mean(axis=0)
        self.ybar = float(gain[train].mean())
        Ac = A - self.mean
        self.S = Ac.T @ Ac
        self.r = Ac.T @ (gain[train] - self.ybar)

    def fit(self, cols: np.ndarray, pens: np.ndarray) -> tuple[np.ndarray, float]:
        """(beta over ``cols``, intercept) of the ridge fit."""
        beta = np.linalg.solve(self.S[np.ix_(cols, cols)] + np.diag(pens), self.r[cols])
        return beta, self.ybar - float(self.mean[cols] @ beta)


def _oof(design: _Design, prior: np.ndarray, gain: np.ndarray, rows: np.ndarray, fold: np.ndarray,
         k: int) -> dict[Config, np.ndarray]:
    """Out-of-fold predictions over ``rows`` of every config (fold numbers ``fold``, one per row)."""
    out = {c: np.zeros(len(rows)) for c in CONFIGS}
    out[PRIOR_ONLY] = prior[rows].copy()
    for j in range(k):
        test = rows[fold == j]
        stats = _Fold(design, gain, rows[fold != j])
        for config in CONFIGS[1:]:
            cols, pens = design.columns(config)
            beta, b0 = stats.fit(cols, pens)
            out[config][fold == j] = design.A[np.ix_(test, cols)] @ beta + b0
    return out


def _choose(design: _Design, prior: np.ndarray, weak: np.ndarray, strong: np.ndarray, rows: np.ndarray,
            k: int, rng: np.random.Generator) -> tuple[Config, np.ndarray]:
    """The config to use on ``rows``, and its out-of-fold scores.

    A config replaces the prior only if its per-fold APGR gain over the prior is positive by more than
    ``MARGIN_SE`` standard errors (paired over the folds: the best of 18 configs clears one standard error
    by chance alone far too often); among those, the best pooled out-of-fold APGR wins.
    With few or unstructured rows nothing clears that bar and the prior stays, recalibrated.
    """
    fold = _folds(len(rows), k, rng)
    w, s = weak[rows], strong[rows]
    oof = _oof(design, prior, strong - weak, rows, fold, k)

    def fold_apgr(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.evaluate(scores[fold == j], w[fold == j], s[fold == j]).apgr for j in range(k)])

    base = fold_apgr(oof[PRIOR_ONLY])
    best, best_apgr = PRIOR_ONLY, -math.inf
    for config in CONFIGS[1:]:
        diff = fold_apgr(oof[config]) - base
        diff = diff[np.isfinite(diff)]
        if len(diff) < 2 or diff.mean() <= MARGIN_SE * diff.std(ddof=1) / math.sqrt(len(diff)):
            continue
        apgr = metrics.evaluate(oof[config], w, s).apgr
        if apgr > best_apgr + 1e-12:
            best, best_apgr = config, apgr
    return best, oof[best]


def _nested_cv(design: _Design, prior: np.ndarray, weak: np.ndarray, strong: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Out-of-fold scores where each outer fold's config is chosen by CV inside its training rows."""
    n = len(prior)
    fold = _folds(n, FOLDS, rng)
    scores = np.zeros(n)
    gain = strong - weak
    for j in range(FOLDS):
        train, test = np.nonzero(fold != j)[0], np.nonzero(fold == j)[0]
        config, _ = _choose(design, prior, weak, strong, train, INNER_FOLDS, rng)
        if config == PRIOR_ONLY:
            scores[test] = prior[test]
            continue
        cols, pens = design.columns(config)
        beta, b0 = _Fold(design, gain, train).fit(cols, pens)
        scores[test] = design.A[np.ix_(test, cols)] @ beta + b0
    return scores


def _load_prior(prior_path: str | Path | None) -> tuple[bytes, Any]:
    from classifiers.scorer import DEFAULT_MODEL, ComplexityScorer

    path = Path(prior_path) if prior_path is not None else DEFAULT_MODEL
    try:
        data = path.read_bytes()
        scorer = ComplexityScorer(data)
    except Exception as exc:  # noqa: BLE001 -- any failure means "not a usable prior"; one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LearnError(f"cannot load prior model {path}: {reason}") from None
    if scorer.vocabulary is not None:
        raise LearnError(f"prior model {path} has a word block of its own; learn on top of a model without one "
                         "(the shipped default)")
    return data, scorer


def learn(data: Outcomes, out: str | Path, prior_path: str | Path | None = None, seed: int = 0) -> LearnResult:
    """Fit, evaluate and export a deployment model. Raises LearnError on unusable input."""
    from classifiers.scorer import ComplexityScorer

    counts = check(data)
    prior_bytes, prior_model = _load_prior(prior_path)
    X = feature_matrix(data)
    prior = prior_model.logits(X)
    weak, strong = data.weak, data.strong
    if data.features_only:
        length = X[:, _LOG_CHARS].copy()
        vocabulary: tuple[str, ...] = ()
        words = np.zeros((len(X), 0))
    else:
        length = np.array([count_text(split_request(m)[0]) for m in data.messages], dtype=np.float64)
        vocabulary = build_vocabulary(data.messages)
        index = {w: i for i, w in enumerate(vocabulary)}
        words = featurize_many(data.messages, index)[:, N_FEATURES:].astype(np.float64)
    design = _Design(X, prior, words)

    rng = np.random.default_rng(seed)
    nested = _nested_cv(design, prior, weak, strong, rng)
    everything = np.arange(len(prior))
    config, oof = _choose(design, prior, weak, strong, everything, FOLDS, rng)
    a, b = model.fit_platt(oof, model.strong_needed(weak, strong))

    alpha_w = config[1]
    use_words = config != PRIOR_ONLY and not math.isinf(alpha_w) and len(vocabulary) > 0
    vocab = vocabulary if use_words else ()
    n_in = N_FEATURES + len(vocab)
    coef, center = np.zeros(n_in), np.zeros(n_in)
    lo = np.concatenate([X.min(axis=0), np.zeros(len(vocab))])
    hi = np.concatenate([X.max(axis=0), np.ones(len(vocab))])
    shift = design.p_mu
    if config == PRIOR_ONLY:
        a1, a2, const = 1.0, 0.0, shift
        expected_raw = prior
    else:
        cols, pens = design.columns(config)
        beta_cols, b0 = _Fold(design, strong - weak, everything).fit(cols, pens)
        beta = np.zeros(design.A.shape[1])
        beta[cols] = beta_cols
        expected_raw = design.A @ beta + b0
        # Undo the standardisation: bp * q/sd + bq * (q/sd)^2 + bz . (x - mu_x)/sd_x + bw . words + b0, q = p - mu
        bp, bq, sd = float(beta[0]), float(beta[1]), design.p_sd
        a1, a2 = bp / sd, bq / sd**2
        hand = np.zeros(N_FEATURES)
        hand[design.use] = beta[design.hand] / design.sd[design.use]
        coef[:N_FEATURES] = hand
        coef[N_FEATURES:] = beta[design.words] if use_words else 0.0
        const = b0
        center[:N_FEATURES] = design.mu
    new = LinearScore(a * coef, a * const + b, lo, hi, center)

    ids_sha = hashlib.sha256("\n".join(data.ids).encode()).hexdigest()[:12]
    result_metrics = (metrics.evaluate(nested, weak, strong), metrics.evaluate(prior, weak, strong),
                      metrics.evaluate(length, weak, strong))
    meta = {
        "kind": "learned",
        "prior_model_id": prior_model.model_id,
        "trained_on": f"{len(data.ids)} rows, ids sha256 {ids_sha}",
        "seed": str(seed),
        "config": describe(config),
        "cv_apgr": f"model {result_metrics[0].apgr:.4f} (nested), prior {result_metrics[1].apgr:.4f}, "
                   f"length {result_metrics[2].apgr:.4f}",
        "label": "ridge on strong - weak over the prior logit, the hand features and a word block; "
                 "Platt-calibrated to P(strong beats weak)",
    }
    out = Path(out)
    # onnx is the train layer's: a serving worker imports this module without it.
    from classifiers import export

    # The prior alone keeps its whole range (its ranking, recalibrated); a fitted mix is clipped to the
    # prior's range on these rows, like the features, so its weights are never applied beyond what they saw.
    prior_range = (-math.inf, math.inf) if config == PRIOR_ONLY else (design.p_lo, design.p_hi)
    onnx_bytes = export.stacked_model(prior_bytes, prior_range, shift, a * a1, a * a2, new, out, meta, vocab)
    learned = ComplexityScorer(onnx_bytes)
    check_rows = everything[:256]
    inputs = learned.features([data.messages[i] for i in check_rows]) if vocab else X[check_rows]
    got = learned.logits(inputs)
    expected = a * expected_raw[check_rows] + b
    drift = float(np.max(np.abs(got - expected)))
    if drift > 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        out.unlink()
        raise RuntimeError(f"exported model differs from the fit by up to {drift} in the logit")
    return LearnResult(out, learned.model_id, len(onnx_bytes), len(data.ids), counts, config, len(vocab),
                       *result_metrics)


def feature_matrix(data: Outcomes) -> np.ndarray:
    """Hand features of every row: computed from the messages, or the stored vector of a features-only row."""
    if not data.features_only:
        return featurize_many(data.messages).astype(np.float64)
    X = np.zeros((len(data.ids), N_FEATURES))
    texts = [i for i, f in enumerate(data.features) if f is None]
    if texts:
        X[texts] = featurize_many([data.messages[i] for i in texts])
    for i, f in enumerate(data.features):
        if f is not None:
            X[i] = f
    return X


def describe(config: Config) -> str:
    """One line naming a config."""
    if config == PRIOR_ONLY:
        return "the prior alone (no config beat it by two standard errors in CV), recalibrated on these rows"
    alpha_f, alpha_w, square = config
    words = "no word block" if math.isinf(alpha_w) else f"word block alpha {alpha_w:g}"
    return f"ridge on the prior logit{' and its square' if square else ''}, hand features alpha {alpha_f:g}, {words}"


def format_result(r: LearnResult) -> str:
    """What ``tiergate learn`` prints."""
    return "\n".join([
        f"{r.n} rows: strong tier better on {r.counts[0]}, weak better on {r.counts[1]}, tie on {r.counts[2]}",
        "| score | APGR | CPT(50%) | CPT(80%) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {m.apgr:.3f} | {100 * m.cpt50:.1f}% | {100 * m.cpt80:.1f}% |" for name, m in (
            (f"learned model ({FOLDS}-fold nested CV)", r.cv_model), ("prior", r.prior),
            ("prompt length (tokens)", r.length))),
        f"chosen by {FOLDS}-fold CV on these rows: {describe(r.config)}"
        + (f" ({r.vocabulary_size} words)" if r.vocabulary_size else ""),
        f"wrote {r.path} ({r.size_bytes} bytes, model id {r.model_id})",
    ])
