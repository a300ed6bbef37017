"""Follow-up experiments on the features + logistic-regression family: training targets, a
candidate-feature ablation, and how much of the result is noise.

    .venv/bin/python benchmarks/classifier/experiments_targets.py

Same protocol as experiments.py (MMLU DEV, subject-grouped CV, pooled out-of-fold, RouteLLM
metrics, "wins" = folds beating prompt length in tokens). About 2 minutes on one core.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.features import _option_block, featurize_many, split_request  # noqa: E402
from metering.tokens import count_text  # noqa: E402


def main() -> None:
    d = dataset.load(REPO / "classifiers" / "data", for_training=True)
    w, s, G = d.weak, d.strong, d.groups
    X = featurize_many(d.messages)
    texts = [split_request(m)[0] for m in d.messages]
    tokens = np.array([count_text(t) for t in texts], dtype=float)
    wf, sf = model.fails(w), model.fails(s)
    bal = model.group_balanced_weights(G)
    C = model.C

    def lr():
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))

    def show(name: str, oof: np.ndarray) -> np.ndarray:
        r = cv.report(oof, tokens, w, s, G)
        p = r.pooled
        print(f"| {name} | {p.apgr:.3f} | {100 * p.cpt50:.1f}% | {100 * p.cpt80:.1f}% | {r.wins}/{len(r.scored_folds)} |", flush=True)
        return oof

    def proba(y: np.ndarray, weights: np.ndarray, rows_filter: np.ndarray | None = None, Xm: np.ndarray = X):
        def fp(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            fit_rows = tr if rows_filter is None else tr & rows_filter
            m = lr().fit(Xm[fit_rows], y[fit_rows], logisticregression__sample_weight=weights[fit_rows])
            return m.predict_proba(Xm[te])[:, 1]
        return fp

    print(f"All rows: C={C}, subject-balanced weights unless stated.\n")
    print("| score | APGR | CPT(50%) | CPT(80%) | wins vs length |\n|---|---:|---:|---:|---:|")
    show("prompt length (tokens)", tokens)
    shipped = show("SHIPPED: a model fails (stacked weak+strong)",
                   cv.out_of_fold(lambda tr, te: model.decision(model.fit(X[tr], w[tr], s[tr], G[tr]), X[te]), G))

    # Decomposition E[gain] ~ P(weak fails) * P(strong right | weak fails)
    p_wf = show("P(weak fails)", cv.out_of_fold(proba(wf, bal), G))
    p_sok = show("P(strong right | weak fails)", cv.out_of_fold(proba(1 - sf, bal, rows_filter=wf == 1), G))
    show("P(weak fails) x P(strong right | weak fails)", p_wf * p_sok)
    p_sf = show("P(strong fails)", cv.out_of_fold(proba(sf, bal), G))
    show("P(weak fails) - P(strong fails) (= E[gain])", p_wf - p_sf)

    # Interpolating from "weak fails" towards "strong beats weak": down-weight rows both models fail.
    both = (wf == 1) & (sf == 1)
    for alpha in (0.0, 0.3, 0.6):
        show(f"weak fails, rows both fail weighted {alpha}", cv.out_of_fold(proba(wf, bal * np.where(both, alpha, 1.0)), G))

    # Candidate features that did not make it (each appended to the shipped feature set).
    pron = re.compile(r"\b(he|she|his|her|him|they|their|a man|a woman|defendant|plaintiff|patient|person|company|firm)\b", re.I)

    def extra(text: str) -> list[float]:
        lines = text.split("\n")
        stem = "\n".join(lines[: _option_block(lines)[0]]).strip()
        n = max(len(stem.split()), 1)
        return [len(pron.findall(stem)) / n, float(stem.endswith("?")), float("which of the following" in stem.lower()),
                len(re.findall(r"\d+(?:\.\d+)?", stem)) / n, float(bool(re.search(r"[a-z,:]$", stem)))]

    E = np.array([extra(t) for t in texts])
    for j, name in enumerate(["scenario/pronoun rate", "stem ends with '?'", "'which of the following'",
                              "numbers in stem", "completion-style stem"]):
        XE = np.hstack([X, E[:, [j]]])
        show(f"SHIPPED + {name}",
             cv.out_of_fold(lambda tr, te: model.decision(model.fit(XE[tr], w[tr], s[tr], G[tr]), XE[te]), G))

    # Noise: subject bootstrap of (model APGR - length APGR) on the pooled out-of-fold scores.
    rng = np.random.default_rng(0)
    subjects = np.array(sorted(set(G.tolist())))
    index = {g: np.nonzero(G == g)[0] for g in subjects}
    print("\nSubject bootstrap (200 resamples of the 29 subjects) of APGR minus prompt-length APGR:")
    for name, oof in (("SHIPPED", shipped), ("P(weak fails)", p_wf), ("P(strong fails)", p_sf)):
        diffs = []
        for _ in range(200):
            ii = np.concatenate([index[g] for g in rng.choice(subjects, len(subjects))])
            diffs.append(metrics.evaluate(oof[ii], w[ii], s[ii]).apgr - metrics.evaluate(tokens[ii], w[ii], s[ii]).apgr)
        print(f"  {name}: mean {np.mean(diffs):+.3f}, sd {np.std(diffs):.3f}, P(<=0) {np.mean(np.array(diffs) <= 0):.2f}")

    # Where the headroom is: subject-level ranking.
    sm = {g: (s - w)[G == g].mean() for g in subjects}
    subj_oracle = np.array([sm[g] for g in G])
    print(f"\nOracle that knows each held-out subject's mean gain (constant within subject): "
          f"APGR {metrics.evaluate(subj_oracle, w, s).apgr:.3f}")
    means = np.array([[sm[g], shipped[G == g].mean()] for g in subjects])
    print(f"Correlation over subjects of mean gain vs mean SHIPPED score: {np.corrcoef(means.T)[0, 1]:+.2f}")


if __name__ == "__main__":
    main()
