"""Every model family and label tried for the complexity classifier, on one protocol.

Protocol (issue 3): MMLU DEV rows only for fitting; subject-grouped CV (one whole subject held
out per fold), out-of-fold scores pooled over all folds, RouteLLM metrics (classifiers.metrics,
cross-checked against shared/tools/route_eval.py by tests/test_classifier_training.py). "wins" =
folds where the model's within-subject APGR beats prompt length (tokens); 27 folds have a defined
PGR (college_chemistry and world_religions have strong <= weak). AlpacaEval (CC BY-NC) is
evaluation only: each family is refitted on all MMLU rows and scores the 805 AlpacaEval prompts.

    .venv/bin/python benchmarks/classifier/experiments.py [--only SUBSTRING]

The all-MiniLM-L6-v2 embedding family is in experiments_encoder.py (ONNX forward pass).
Single-threaded; the full run takes about 4 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scipy.sparse import csr_matrix, hstack  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.features import featurize_many, split_request  # noqa: E402
from metering.tokens import count_text  # noqa: E402

ALPACA = REPO.parent / "shared" / "data" / "routing" / "alpaca_eval.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()

    d = dataset.load(REPO / "classifiers" / "data", for_training=True)
    w, s, G = d.weak, d.strong, d.groups
    X = featurize_many(d.messages)
    texts = [split_request(m)[0] for m in d.messages]
    tokens = np.array([count_text(t) for t in texts], dtype=float)
    al = dataset.load(ALPACA) if ALPACA.exists() else None
    XA = featurize_many(al.messages) if al else None
    textsA = [split_request(m)[0] for m in al.messages] if al else None

    wf, sf, gain_pos = model.fails(w), model.fails(s), model.strong_needed(w, s)
    bal = model.group_balanced_weights(G)
    ones = np.ones(len(G))

    def lr(C: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))

    def linear(C: float, y: np.ndarray, weights: np.ndarray, Xm: np.ndarray = X):
        def fit(rows: np.ndarray):
            return lr(C).fit(Xm[rows], y[rows], logisticregression__sample_weight=weights[rows])
        return fit

    def stacked(C: float, weights: np.ndarray, Xm: np.ndarray = X):
        def fit(rows: np.ndarray):
            Xs = np.vstack([Xm[rows], Xm[rows]])
            return lr(C).fit(Xs, np.r_[wf[rows], sf[rows]], logisticregression__sample_weight=np.r_[weights[rows], weights[rows]])
        return fit

    def hgb(y: np.ndarray, weights: np.ndarray, **kw):
        def fit(rows: np.ndarray):
            params = dict(max_depth=3, learning_rate=0.05, max_iter=150, min_samples_leaf=40, random_state=0) | kw
            return HistGradientBoostingClassifier(**params).fit(X[rows], y[rows], sample_weight=weights[rows])
        return fit

    def ridge_gain(alpha: float):
        def fit(rows: np.ndarray):
            return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X[rows], (s - w)[rows])
        return fit

    def out(m, Xm):
        if hasattr(m, "decision_function"):
            return m.decision_function(Xm)
        if hasattr(m, "predict_proba"):
            return m.predict_proba(Xm)[:, 1]
        return m.predict(Xm)

    results: list[tuple[str, cv.CVReport, float]] = []

    def run(name: str, fit: Callable[[np.ndarray], object] | None, Xm=X, XAm=None, fixed=None, fixedA=None) -> None:
        if args.only and args.only not in name:
            return
        if fixed is not None:
            oof, a_scores = fixed, fixedA
        else:
            oof = cv.out_of_fold(lambda tr, te: out(fit(tr), Xm[te]), G)
            a_scores = out(fit(np.ones(len(G), bool)), XAm if XAm is not None else XA) if al else None
        rep = cv.report(oof, tokens, w, s, G)
        a_apgr = metrics.evaluate(a_scores, al.weak, al.strong).apgr if al is not None and a_scores is not None else float("nan")
        results.append((name, rep, a_apgr))
        p = rep.pooled
        print(f"| {name} | {p.apgr:.3f} | {100 * p.cpt50:.1f}% | {100 * p.cpt80:.1f}% | {rep.wins}/{len(rep.scored_folds)} | {a_apgr:.3f} |", flush=True)

    print("| score | APGR | CPT(50%) | CPT(80%) | wins vs length | AlpacaEval APGR |")
    print("|---|---:|---:|---:|---:|---:|")
    tokA = np.array([count_text(t) for t in textsA]) if al else None
    run("prompt length (tokens)", None, fixed=tokens, fixedA=tokA)
    run("prompt length (chars)", None, fixed=np.array([len(t) for t in texts], float),
        fixedA=np.array([len(t) for t in textsA], float) if al else None)
    # hand-built features, linear head, label variants
    run("features LR, label strong beats weak, C=0.01", linear(0.01, gain_pos, ones))
    run("features LR, label strong beats weak, C=0.001, subject-balanced", linear(0.001, gain_pos, bal))
    run("features Ridge, target gain (strong - weak)", ridge_gain(10.0))
    run("features LR, label weak fails, C=0.01", linear(0.01, wf, ones))
    run("features LR, label weak fails, C=0.001, subject-balanced", linear(0.001, wf, bal))
    run("features LR, label strong fails, C=0.001, subject-balanced", linear(0.001, sf, bal))
    run("features LR, label a model fails (stacked), C=0.01, subject-balanced", stacked(0.01, bal))
    run("**SHIPPED** features LR, label a model fails (stacked), C=0.001, subject-balanced", stacked(0.001, bal))
    # hand-built features, gradient-boosted trees
    run("features HGB, label strong beats weak", hgb(gain_pos, ones))
    run("features HGB, label weak fails", hgb(wf, ones))
    run("features HGB, label weak fails, subject-balanced", hgb(wf, bal))
    n = X.shape[1]
    mono = [1 if i in (0, 1, 3) else 0 for i in range(n)]  # longer = not easier
    run("features HGB monotone in length, label weak fails, subject-balanced", hgb(wf, bal, monotonic_cst=mono))

    # learned text features: hashed word 1-2 grams + char 3-5 grams, TF-IDF, LR
    if not args.only or "hash" in args.only:
        words = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False, norm=None)
        chars = HashingVectorizer(n_features=2**18, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False, norm=None)
        raw = hstack([words.transform(texts), chars.transform(texts)]).tocsr()
        tfidf = TfidfTransformer(sublinear_tf=True).fit(raw)
        H = tfidf.transform(raw)
        HA = tfidf.transform(hstack([words.transform(textsA), chars.transform(textsA)]).tocsr()) if al else None

        def sparse_lr(C: float, y: np.ndarray, weights: np.ndarray, Hm):
            def fit(rows: np.ndarray):
                return LogisticRegression(C=C, max_iter=3000).fit(Hm[rows], y[rows], sample_weight=weights[rows])
            return fit

        run("hashed n-grams LR, label strong beats weak", sparse_lr(1.0, gain_pos, ones, H), Xm=H, XAm=HA)
        run("hashed n-grams LR, label weak fails", sparse_lr(1.0, wf, ones, H), Xm=H, XAm=HA)
        run("hashed n-grams LR, label weak fails, subject-balanced", sparse_lr(1.0, wf, bal, H), Xm=H, XAm=HA)
        Z = csr_matrix(StandardScaler().fit_transform(X))
        HZ = hstack([H, Z]).tocsr()
        HZA = hstack([HA, csr_matrix(StandardScaler().fit(X).transform(XA))]).tocsr() if al else None
        run("hashed n-grams + features LR, label weak fails, subject-balanced", sparse_lr(0.3, wf, bal, HZ), Xm=HZ, XAm=HZA)


if __name__ == "__main__":
    main()
