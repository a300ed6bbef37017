"""Round 6 (issue 12): can the round-5 default model be made robust across domains cheaply? Same protocol as round 5.

    nice -n 10 .venv/bin/python benchmarks/classifier/experiments_round6.py [--only a|b|c] [--table NAME]

Written, candidates and decision rule included, before any round-6 number was seen (RESULTS.md section 13).

Protocol (round 5's, ``experiments_broad.py``): every file of ../shared/data/routing; training pool = rows not in
``classifiers.dataset.TRAINING_EXCLUDED_SOURCES``; domain-grouped CV, one whole domain held out per fold (52 folds),
a fold never trains on a copy of a held-out question; IRT labels re-fitted from each fold's training rows (what
``tiergate train`` reports). Criterion: the unweighted mean over the four training files (mmlu, mmlu_pro,
math_l5, llmrouter) of the pooled out-of-fold APGR. Also reported per candidate: mean APGR over the 49 held-out
domains with a defined PGR, the number of them below 0.5, and the number *significantly* below 0.5 (per-domain
bootstrap over rows, 1,000 resamples, the same resamples for every score; the 90% percentile interval's upper
bound < 0.5). ARC, GPQA (LLMRouter tasks excluded from training) and AlpacaEval are scored by the candidate
fitted on the whole pool and reported only, never selected on.

Baseline ("round-5 default"): the shipped recipe (``classifiers.train.fit``: IRT label, ridge alpha 10000,
domain-balanced weights, the three ask_* features dropped).

Candidates (priority order):
(a) Robust ensembles of the round-5 prior with prompt length, not fitted per domain. ``log_chars`` (the model's
    own input, clipped to the training range as the ONNX graph clips it) stands for prompt length, so the
    ensemble is still one clipped linear map and costs no latency. z-scoring constants (plain mean and sd)
    come from the fold's training rows (the prior's in-sample logits there):
    - ``z(prior) + w * z(log_chars)``, w in {0.25, 0.5, 1.0};
    - rank average ``F_prior(prior) + F_len(log_chars)``, F = the training rows' empirical CDF (mid-ranks).
    Rationale: two weakly positive signals averaged are usually better than either, and length holds where the
    prior is below random (MATH L5, GSM8K, logic grids).
(b) A word 1-2-gram block next to the hand features, IRT label, domain-balanced ridge: 0/1 presence of the
    fold's vocabulary (terms of ``features.request_words``: unigrams and adjacent bigrams that occur in at least
    5 training domains and 20 training rows; the 1,000 with most domains, then rows, then alphabetical), centred,
    unstandardised, its own penalty alpha_w in {300, 1000, 3000, 10000, none (no block)} chosen by nested
    grouped CV inside each outer fold (the outer training domains dealt in sorted order into 5 inner folds,
    duplicates excluded, outer-fold labels, the same criterion on the inner out-of-fold scores). Hand features
    keep alpha 10000. Rows "block alpha_w fixed" (300 and 1000) are diagnostics, not candidates.
(c) "Both fail" down-weighting: rows where both routed models score 0 get 0.25 of their ridge weight. Reason:
    at the top of the difficulty scale the pair's gain falls (MATH L5, GPQA: both fail the hardest items), so
    those rows teach "harder = route up" exactly where that is false; the label itself is unchanged.

Decision rule: a candidate is eligible if its criterion beats the baseline's by more than 0.001 AND its count
of domains below 0.5 is not higher than the baseline's AND its count significantly below 0.5 is not higher.
Among eligible candidates the highest criterion ships; within 0.001 of each other the earlier in the
priority order above wins (cheaper, simpler). A (b) winner ships only if its latency meets p50 <= 0.6 ms at 2k
tokens; otherwise the next eligible one. No eligible candidate: nothing ships. (Selecting among ~6 candidates
on the same folds is optimistic by the spread among close candidates, as in round 5.)

Single-threaded; nice it. ~10-25 minutes on one core (the n-gram block's nested CV is most of it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from scipy import sparse

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments_broad import TRAIN_FILES, load_all, round3_scores  # noqa: E402

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.features import FEATURE_NAMES, request_words  # noqa: E402

LOG_CHARS = FEATURE_NAMES.index("log_chars")
WEIGHTS = (0.25, 0.5, 1.0)
BLOCK_ALPHAS = (300.0, 1000.0, 3000.0, 10000.0, float("inf"))
VOCAB_SIZE, MIN_DOMAINS, MIN_ROWS, INNER_FOLDS = 1000, 5, 20, 5
BOTH_FAIL_WEIGHT = 0.25
BOOTSTRAPS = 1000

# A fit: (train data, train X, train labels, train term sets) -> decision function on (X, term sets).
Scorer = Callable[[np.ndarray, list[frozenset[str]]], np.ndarray]


# ------------------------------------------------------------------------------------------------ (a) ensembles


def prior_fit(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
              ) -> model.LinearScore:
    w = model.balanced_weights(d.groups) if weights is None else weights
    return model.fit_linear(X, y, w, model.ALPHA, drop=model.DEFAULT_DROP)


def clipped_length(prior: model.LinearScore, X: np.ndarray) -> np.ndarray:
    return np.clip(X[:, LOG_CHARS], prior.lo[LOG_CHARS], prior.hi[LOG_CHARS])


def z_ensemble(w: float) -> Callable:
    def fit(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, _terms: list) -> Scorer:
        prior = prior_fit(d, X, y)
        p, ln = prior.decision(X), clipped_length(prior, X)
        mp, sp, ml, sl = p.mean(), p.std(), ln.mean(), ln.std()
        return lambda Xt, _t: (prior.decision(Xt) - mp) / sp + w * (clipped_length(prior, Xt) - ml) / sl
    return fit


def _cdf(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    s = np.sort(train)
    return lambda v: (np.searchsorted(s, v, "left") + np.searchsorted(s, v, "right")) / (2.0 * len(s))


def rank_average(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, _terms: list) -> Scorer:
    prior = prior_fit(d, X, y)
    fp, fl = _cdf(prior.decision(X)), _cdf(clipped_length(prior, X))
    return lambda Xt, _t: fp(prior.decision(Xt)) + fl(clipped_length(prior, Xt))


def baseline(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, _terms: list) -> Scorer:
    prior = prior_fit(d, X, y)
    return lambda Xt, _t: prior.decision(Xt)


# ------------------------------------------------------------------------------------------------ (c)


def both_fail(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, _terms: list) -> Scorer:
    w = model.balanced_weights(d.groups) * np.where((d.weak <= 0) & (d.strong <= 0), BOTH_FAIL_WEIGHT, 1.0)
    prior = prior_fit(d, X, y, w * (len(w) / w.sum()))
    return lambda Xt, _t: prior.decision(Xt)


# ------------------------------------------------------------------------------------------------ (b) n-gram block


def terms_of(messages: object) -> frozenset[str]:
    words = request_words(messages)
    return frozenset(words) | frozenset(f"{a} {b}" for a, b in zip(words, words[1:]))


def vocabulary(groups: np.ndarray, terms: list[frozenset[str]]) -> dict[str, int]:
    rows: dict[str, int] = {}
    doms: dict[str, set[str]] = {}
    for g, ts in zip(groups.tolist(), terms):
        for t in ts:
            rows[t] = rows.get(t, 0) + 1
            doms.setdefault(t, set()).add(g)
    keep = [t for t, n in rows.items() if n >= MIN_ROWS and len(doms[t]) >= MIN_DOMAINS]
    keep.sort(key=lambda t: (-len(doms[t]), -rows[t], t))
    return {t: j for j, t in enumerate(keep[:VOCAB_SIZE])}


def block(terms: list[frozenset[str]], vocab: dict[str, int]) -> sparse.csr_matrix:
    indptr, indices = [0], []
    for ts in terms:
        indices += sorted(vocab[t] for t in ts if t in vocab)
        indptr.append(len(indices))
    data = np.ones(len(indices))
    shape = (len(terms), len(vocab))
    return sparse.csr_matrix((data, np.array(indices, dtype=np.int64), np.array(indptr)), shape=shape)


def block_ridge(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, B: sparse.csr_matrix,
                alphas: tuple[float, ...]) -> dict[float, Callable[[np.ndarray, sparse.csr_matrix], np.ndarray]]:
    """Domain-balanced ridge on standardised hand features (alpha 10000) + a centred 0/1 block, one per alpha_w."""
    weights = model.balanced_weights(d.groups)
    use = model._usable(X, model.DEFAULT_DROP)
    mu = np.average(X, axis=0, weights=weights)
    sd = np.sqrt(np.average((X - mu) ** 2, axis=0, weights=weights))
    Z = (X[:, use] - mu[use]) / sd[use]
    ybar = float(np.average(y, weights=weights))
    r = y - ybar
    sw = weights.sum()
    bbar = np.asarray(B.T @ weights).ravel() / sw
    WB = sparse.diags(weights) @ B
    a11 = Z.T @ (Z * weights[:, None])
    a12 = np.asarray((WB.T @ Z).T)
    a22 = np.asarray((B.T @ WB).todense()) - sw * np.outer(bbar, bbar)
    rhs = np.concatenate([Z.T @ (weights * r), np.asarray(WB.T @ r).ravel()])
    p, k = Z.shape[1], B.shape[1]
    out = {}
    for a in alphas:
        if np.isinf(a):
            beta = np.linalg.solve(a11 + model.ALPHA * np.eye(p), rhs[:p])
            beta = np.concatenate([beta, np.zeros(k)])
        else:
            G = np.block([[a11, a12], [a12.T, a22]]) + np.diag(np.r_[np.full(p, model.ALPHA), np.full(k, a)])
            beta = np.linalg.solve(G, rhs)

        def score(Xt: np.ndarray, Bt: sparse.csr_matrix, beta: np.ndarray = beta) -> np.ndarray:
            return ((Xt[:, use] - mu[use]) / sd[use]) @ beta[:p] + Bt @ beta[p:] - bbar @ beta[p:] + ybar
        out[a] = score
    return out


def criterion(score: np.ndarray, d: dataset.OutcomeData) -> float:
    vals = [metrics.evaluate(score[m], d.weak[m], d.strong[m]).apgr
            for c in TRAIN_FILES for m in [d.collections == c] if m.any()]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def nested_block(choices: list[float]) -> Callable:
    """Candidate (b): alpha_w chosen by inner grouped CV on the outer training rows; ``choices`` records them."""
    def fit(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, terms: list) -> Scorer:
        vocab = vocabulary(d.groups, terms)
        B = block(terms, vocab)
        doms = sorted(set(d.groups.tolist()))
        inner = np.array([doms.index(g) % INNER_FOLDS for g in d.groups.tolist()])
        oof = {a: np.zeros(len(d)) for a in BLOCK_ALPHAS}
        for k in range(INNER_FOLDS):
            test = inner == k
            train = cv.train_mask(test, d.ids, d.duplicates)
            fits = block_ridge(d.subset(train), X[train], y[train], B[np.nonzero(train)[0]], BLOCK_ALPHAS)
            for a, f in fits.items():
                oof[a][test] = f(X[test], B[np.nonzero(test)[0]])
        crit = {a: criterion(oof[a], d) for a in BLOCK_ALPHAS}
        best = max(BLOCK_ALPHAS, key=lambda a: (crit[a], a))  # ties: the stronger penalty
        choices.append(best)
        f = block_ridge(d, X, y, B, (best,))[best]
        return lambda Xt, tt: f(Xt, block(tt, vocab))
    return fit


def fixed_block(alpha: float) -> Callable:
    def fit(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray, terms: list) -> Scorer:
        vocab = vocabulary(d.groups, terms)
        f = block_ridge(d, X, y, block(terms, vocab), (alpha,))[alpha]
        return lambda Xt, tt: f(Xt, block(tt, vocab))
    return fit


# ------------------------------------------------------------------------------------------------ evaluation


class Folds:
    """The pool, its folds and per-fold labels, computed once and shared by every candidate."""

    def __init__(self, data: dataset.OutcomeData, X: np.ndarray, terms: list[frozenset[str]], pool: np.ndarray):
        self.data, self.X, self.terms, self.pool = data, X.astype(np.float64), terms, pool
        self.sub = data.subset(pool)
        self.Xp = self.X[pool]
        self.tp = [t for t, p in zip(terms, pool) if p]
        self.folds = []
        for g in sorted(set(self.sub.groups.tolist())):
            test = self.sub.groups == g
            train = cv.train_mask(test, self.sub.ids, self.sub.duplicates)
            self.folds.append((test, train, model.target(self.sub.subset(train), model.LABEL)))
        self.y_all = model.target(self.sub, model.LABEL)

    def run(self, fit: Callable) -> np.ndarray:
        scores = np.zeros(len(self.data))
        oof = np.zeros(len(self.sub))
        for test, train, y in self.folds:
            ti, te = np.nonzero(train)[0], np.nonzero(test)[0]
            f = fit(self.sub.subset(train), self.Xp[train], y, [self.tp[i] for i in ti])
            oof[test] = f(self.Xp[test], [self.tp[i] for i in te])
        scores[self.pool] = oof
        rest = np.nonzero(~self.pool)[0]
        f = fit(self.sub, self.Xp, self.y_all, self.tp)
        scores[~self.pool] = f(self.X[rest], [self.terms[i] for i in rest])
        return scores


def bootstrap_indices(data: dataset.OutcomeData, pool: np.ndarray) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    out = {}
    for g in sorted(set(data.groups[pool].tolist())):
        rows = np.nonzero((data.groups == g) & pool)[0]
        out[g] = [rows[rng.integers(0, len(rows), len(rows))] for _ in range(BOOTSTRAPS)]
    return out


def summary(name: str, scores: np.ndarray, data: dataset.OutcomeData, pool: np.ndarray,
            boot: dict[str, list[np.ndarray]]) -> dict:
    out: dict = {"name": name}
    for f in TRAIN_FILES:
        m = (data.collections == f) & pool
        out[f] = metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
    out["criterion"] = float(np.mean([out[f] for f in TRAIN_FILES]))
    for key, m in (("arc", data.sources == "llmrouter-arc"), ("gpqa", data.sources == "llmrouter-gpqa"),
                   ("alpaca_eval", data.sources == "alpaca_eval")):
        out[key] = metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
    doms, sig = [], 0
    per_domain = {}
    for g, samples in boot.items():
        m = (data.groups == g) & pool
        a = metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
        per_domain[g] = a
        if not np.isfinite(a):
            continue
        doms.append(a)
        if a < 0.5:  # only a domain below 0.5 can have its upper bound below 0.5
            bs = [metrics.evaluate(scores[i], data.weak[i], data.strong[i]).apgr for i in samples]
            sig += int(np.nanpercentile(bs, 95) < 0.5)
    out["domain_mean"] = float(np.mean(doms))
    out["below"] = int(sum(a < 0.5 for a in doms))
    out["sig_below"] = sig
    out["per_domain"] = per_domain
    return out


HEADER = ("| score | MMLU | MMLU-Pro | MATH L5 | LLMRouter (8 tasks) | criterion (mean of 4) | mean over 49 domains "
          "| domains < 0.5 | significantly < 0.5 | ARC (eval only) | GPQA (eval only) | AlpacaEval (eval only) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def fmt(row: dict) -> str:
    cols = [row[f] for f in TRAIN_FILES] + [row["criterion"], row["domain_mean"], row["below"], row["sig_below"],
                                            row["arc"], row["gpqa"], row["alpaca_eval"]]
    return f"| {row['name']} | " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cols) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, choices=("a", "b", "c"))
    ap.add_argument("--table", default=None, help="print the per-domain table of this candidate name")
    args = ap.parse_args()
    np.seterr(all="ignore")
    data, X, length = load_all()
    pool = ~np.isin(data.sources, list(dataset.TRAINING_EXCLUDED_SOURCES))
    terms = [terms_of(m) for m in data.messages]
    folds = Folds(data, X, terms, pool)
    boot = bootstrap_indices(data, pool)
    print(f"{len(data)} rows, pool {int(pool.sum())}, {len(folds.folds)} folds", flush=True)
    choices: list[float] = []
    cands: list[tuple[str, str, Callable]] = [("-", "round-5 default (shipped)", baseline)]
    cands += [("a", f"(a) z(prior) + {w:g} z(log length)", z_ensemble(w)) for w in WEIGHTS]
    cands += [("a", "(a) rank average of prior and log length", rank_average)]
    cands += [("b", "(b) + word 1-2-gram block, alpha_w by nested grouped CV", nested_block(choices))]
    # Diagnostics: the two weaker penalties only (the nested choice covers 3000 / 10000; ~9 min each when shared).
    cands += [("b", f"(b) diagnostic: block alpha_w fixed {a:g}", fixed_block(a)) for a in BLOCK_ALPHAS[:2]]
    cands += [("c", f"(c) both-fail rows weighted {BOTH_FAIL_WEIGHT:g}", both_fail)]
    rows = [summary("prompt length (tokens)", length, data, pool, boot),
            summary("round-3 model (71c13ba; in-sample on MMLU)", round3_scores(data), data, pool, boot)]
    print(HEADER)
    for r in rows:
        print(fmt(r), flush=True)
    for tag, name, fit in cands:
        if args.only and tag not in ("-", args.only):
            continue
        if args.table and name not in (args.table, "round-5 default (shipped)"):
            continue
        row = summary(name, folds.run(fit), data, pool, boot)
        rows.append(row)
        print(fmt(row), flush=True)
        if "nested" in name:
            print(f"    alpha_w chosen per outer fold (+ full pool): {[f'{a:g}' for a in choices]}", flush=True)
    if args.table:
        by = {r["name"]: r for r in rows}
        cols = ["prompt length (tokens)", "round-3 model (71c13ba; in-sample on MMLU)", "round-5 default (shipped)",
                args.table]
        print(f"| domain | prompt length | round-3 | round-5 default | {args.table} | new - length | new - round 5 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for g in by[cols[0]]["per_domain"]:
            v = [by[c]["per_domain"][g] for c in cols]
            print(f"| {g} | " + " | ".join(f"{a:.3f}" for a in v) + f" | {v[3] - v[0]:+.3f} | {v[3] - v[2]:+.3f} |")


if __name__ == "__main__":
    main()
