"""Round 7 (issue 12): leave-one-collection-out (LOCO) evaluation and expected-gain labels.

    nice -n 10 .venv/bin/python benchmarks/classifier/experiments_round7.py [--only NAME] [--grouped NAME ...]

Written, protocol, candidates and decision rule included, before any round-7 number was seen (RESULTS.md
section 14).

Why. Rounds 5-6 held out one domain at a time, so a held-out MMLU subject still trained on 28 other MMLU
subjects in the same layout with the same routed pair: that flatters the score on exactly the traffic it
resembles. Issue 12 asks for a score that holds on traffic unlike its training data. Known failure: a
difficulty label ranks the items both routed models fail highest, so where the pair's gain falls at the top
of the difficulty scale (MATH level 5, GPQA) the score is below random.

Protocol (LOCO):
- Rows: every file of ../shared/data/routing (``experiments_broad.load_all``). Training pool = rows not in
  ``classifiers.dataset.TRAINING_EXCLUDED_SOURCES``: four training files (collections) mmlu, mmlu_pro,
  math_l5 and llmrouter (its 8 permitted tasks).
- Four folds: train on three files, score the fourth. Rows of the training files that are copies of a
  held-out question (``meta.dev_duplicates``, either direction; MMLU-Pro repeats 3,768 MMLU questions) are
  excluded from training (``classifiers.cv.train_mask``). Labels (IRT fits, abilities, z-scores) are computed
  from the training rows only; the head is the shipped one (ridge alpha 10000 on standardised features,
  domain-balanced weights, the three ask_* features dropped: ``model.fit_linear`` with ``model.ALPHA`` and
  ``model.DEFAULT_DROP``), the same 36 hand features (``FEATURE_NAMES``); latency unchanged. Only the label differs.
- Per held-out file: pooled APGR (RouteLLM's, ``classifiers.metrics``; each file's own routed pair; random
  0.5). Criterion = the unweighted mean over the 4 held-out files of that pooled APGR.
- Also reported (``experiments_round6.summary``): mean APGR over the 49 domains with a defined PGR inside the
  held-out files, domains below 0.5, and domains *significantly* below 0.5 (round 6's per-domain bootstrap:
  1,000 row resamples, the same for every score, 90% interval's upper bound < 0.5); held-out files below 0.5.
- Evaluation only, never used in the decision: AlpacaEval, LLMRouter ARC and GPQA (NQ: PGR undefined), scored
  by each candidate fitted on all four training files.
- Baselines on the same protocol: prompt length in tokens (the request turn), and the round-5 recipe
  (``classifiers.train.fit`` as shipped: IRT difficulty label re-fitted on the training files).
- Optional (``--grouped``): round 5's domain-grouped criterion (52 folds, labels per fold) for named rows.

Candidates (labels; all standardised within each file, computed from the training files of the fold):
Per file, a Rasch fit over every model measured on its items (``labels.irt_difficulty``: item difficulties
b_i), then each model's ability theta_m given those b (Newton, MAP of the same model). The *expected gain* of
a reference pair (theta_w < theta_s) on item i is g_i = sigmoid(theta_s - b_i) - sigmoid(theta_w - b_i): a
bump in b that is low for items both models solve AND for items both fail. MMLU has only its routed pair's
outcomes: there the reference pair is always that pair's fitted abilities.
(A) gain, routed pair: theta_w, theta_s = the abilities of the file's own weak and strong model.
(B) gain, quantile pair: theta_w = the 25th, theta_s = the 75th percentile of the file's model abilities
    (files with >= 9 models: mmlu_pro, math_l5, llmrouter); a deployment's pair is not the file's.
(C) empirical many-pair gain: the mean, over every ordered pair (stronger, weaker) of models measured on the
    item (order = fitted ability), of score_stronger - score_weaker. On MMLU (2 models) this is strong - weak.
(D) blend: z(0.5 z(irt difficulty) + 0.5 z(B)).
(E) blend: z(0.5 z(irt difficulty) + 0.5 z(A)).

Decision rule: a candidate is eligible only if its LOCO criterion beats BOTH baselines (prompt length and the
round-5 recipe) by >= 0.01, AND the number of held-out files where its pooled APGR is below 0.5 is not higher
than the round-5 recipe's. The highest eligible criterion wins (within 0.001: the earlier letter). No
eligible candidate: nothing ships. A winner is reported to the lead; this script changes nothing shipped.
(Five candidates selected on the same four folds: optimistic by the spread among close candidates; four
held-out files is a small sample, so a 0.01 margin is the minimum, not proof.)

Added after the first run (so not candidates, never eligible): ``--diagnostics``, post-hoc rows that vary (B)'s
reference quantiles and blend weight, to see whether (B)'s pattern is stable or a lucky pick; ``--table NAME``, the
per-domain LOCO table of length, the round-5 recipe and one row; ``--paired NAME``, a paired bootstrap of that
row's LOCO criterion minus each baseline's (rows resampled within each held-out domain, 1,000 times, the same
resamples for every score; ignores between-domain variance, so the interval is too narrow if anything) and the
names of the domains significantly below 0.5.

Single-threaded; nice it. A few minutes on one core (--grouped: ~3-5 min per row).
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments_broad import TRAIN_FILES, load_all  # noqa: E402
from experiments_round6 import bootstrap_indices, summary  # noqa: E402

from classifiers import cv, dataset, labels, model  # noqa: E402
from classifiers.train import fit as round5_fit  # noqa: E402

QUANTILES = (0.25, 0.75)
MIN_MODELS = 9  # files with fewer measured models use the routed pair as reference (MMLU: 2)
BLEND = 0.5

# A fit: (training data, training X) -> decision function on X.
Fit = Callable[[dataset.OutcomeData, np.ndarray], Callable[[np.ndarray], np.ndarray]]


# ------------------------------------------------------------------------------------------------ labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def abilities(Y: np.ndarray, b: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Rasch abilities of each model (columns of ``Y``, NaN = unmeasured) given item difficulties ``b``."""
    seen = ~np.isnan(Y)
    Y0 = np.where(seen, Y, 0.0)
    theta = np.zeros(Y.shape[1])
    for _ in range(iterations):
        p = _sigmoid(theta[None, :] - b[:, None])
        grad = np.where(seen, Y0 - p, 0.0).sum(axis=0)
        hess = np.where(seen, p * (1 - p), 0.0).sum(axis=0)
        theta += np.clip(grad / (hess + 1e-9), -2.0, 2.0)
    return theta


def _pair_columns(Y: np.ndarray, weak: np.ndarray, strong: np.ndarray) -> tuple[int, int]:
    """Columns of ``Y`` holding the routed weak and strong model's outcomes (measured on every row)."""
    def find(v: np.ndarray) -> int:
        hits = [j for j in range(Y.shape[1]) if not np.isnan(Y[:, j]).any() and np.array_equal(Y[:, j], v)]
        if len(hits) != 1:
            raise ValueError(f"routed model column not unique: {hits}")
        return hits[0]
    return find(weak), find(strong)


def _file_fit(d: dataset.OutcomeData, c: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    rows = d.collections == c
    Y = d.model_scores[rows]
    Y = Y[:, ~np.isnan(Y).all(axis=0)]
    b = labels.irt_difficulty(Y)
    theta = abilities(Y, b)
    jw, js = _pair_columns(Y, d.weak[rows], d.strong[rows])
    return rows, Y, b, theta, jw, js


def rasch_gain(d: dataset.OutcomeData, reference: str, quantiles: tuple[float, float] = QUANTILES) -> np.ndarray:
    """Expected gain of a reference pair on each item, z-scored within file (candidates A and B)."""
    raw = np.zeros(len(d))
    for c in np.unique(d.collections):
        rows, Y, b, theta, jw, js = _file_fit(d, c)
        if reference == "quantile" and Y.shape[1] >= MIN_MODELS:
            tw, ts = np.quantile(theta, quantiles)
        else:
            tw, ts = theta[jw], theta[js]
        raw[rows] = _sigmoid(ts - b) - _sigmoid(tw - b)
    return labels.within_source_z(raw, d.collections)


def empirical_gain(d: dataset.OutcomeData) -> np.ndarray:
    """Mean over ordered (stronger, weaker) model pairs measured on the item of the score difference (C).

    With the K measured models ranked 1..K by ability, sum over pairs (y_hi - y_lo) = sum_m y_m (2 r_m - K - 1).
    """
    raw = np.zeros(len(d))
    for c in np.unique(d.collections):
        rows, Y, _b, theta, _jw, _js = _file_fit(d, c)
        order = np.argsort(theta, kind="stable")
        Ys = Y[:, order]  # columns weakest -> strongest
        seen = ~np.isnan(Ys)
        K = seen.sum(axis=1)
        r = np.cumsum(seen, axis=1)  # rank among the measured models of the row (1..K where seen)
        w = np.where(seen, 2 * r - K[:, None] - 1, 0)
        raw[rows] = (np.where(seen, Ys, 0.0) * w).sum(axis=1) / np.maximum(K * (K - 1) / 2, 1)
    return labels.within_source_z(raw, d.collections)


def blend(d: dataset.OutcomeData, gain: np.ndarray, weight: float = BLEND) -> np.ndarray:
    irt = model.target(d, "irt")
    return labels.within_source_z((1 - weight) * irt + weight * gain, d.collections)


LABELS: dict[str, Callable[[dataset.OutcomeData], np.ndarray]] = {
    "(A) gain, routed pair (Rasch)": lambda d: rasch_gain(d, "routed"),
    "(B) gain, 25th/75th-percentile pair (Rasch)": lambda d: rasch_gain(d, "quantile"),
    "(C) empirical mean gain over stronger/weaker model pairs": empirical_gain,
    "(D) blend 0.5 irt + 0.5 (B)": lambda d: blend(d, rasch_gain(d, "quantile")),
    "(E) blend 0.5 irt + 0.5 (A)": lambda d: blend(d, rasch_gain(d, "routed")),
}


# Post hoc (added after the first run): sensitivity of (B) to its reference pair and to the blend weight.
DIAGNOSTICS: dict[str, Callable[[dataset.OutcomeData], np.ndarray]] = {
    **{f"diagnostic: (B) with the {int(100 * q[0])}th/{int(100 * q[1])}th-percentile pair":
       (lambda d, q=q: rasch_gain(d, "quantile", q)) for q in ((0.1, 0.9), (0.25, 0.9), (0.5, 0.9), (0.1, 0.5))},
    "diagnostic: blend 0.25 irt + 0.75 (B)": lambda d: blend(d, rasch_gain(d, "quantile"), 0.75),
}


def label_fit(label: Callable[[dataset.OutcomeData], np.ndarray]) -> Fit:
    """The shipped head (ridge alpha 10000, domain-balanced, ask_* dropped) on another label."""
    def fit(d: dataset.OutcomeData, X: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return model.fit_linear(X, label(d), model.balanced_weights(d.groups), model.ALPHA,
                                drop=model.DEFAULT_DROP).decision
    return fit


def round5(d: dataset.OutcomeData, X: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return round5_fit(d, X).decision


# ------------------------------------------------------------------------------------------------ protocols


def loco(fit: Fit, data: dataset.OutcomeData, X: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Held-out-file scores on the pool (train on the other three files, copies excluded); eval-only rows
    scored by the fit on all four files."""
    sub, Xp = data.subset(pool), X[pool]
    oof = np.zeros(len(sub))
    for c in TRAIN_FILES:
        test = sub.collections == c
        train = cv.train_mask(test, sub.ids, sub.duplicates)
        oof[test] = fit(sub.subset(train), Xp[train])(Xp[test])
    scores = np.zeros(len(data))
    scores[pool] = oof
    scores[~pool] = fit(sub, Xp)(X[~pool])
    return scores


def grouped(fit: Fit, data: dataset.OutcomeData, X: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Round 5's protocol: one domain held out per fold (52 folds), labels from each fold's training rows."""
    sub, Xp = data.subset(pool), X[pool]
    scores = np.zeros(len(data))
    scores[pool] = cv.out_of_fold(lambda tr, te: fit(sub.subset(tr), Xp[tr])(Xp[te]), sub.groups, sub.ids,
                                  sub.duplicates)
    scores[~pool] = fit(sub, Xp)(X[~pool])
    return scores


HEADER = ("| score | MMLU held out | MMLU-Pro held out | MATH L5 held out | LLMRouter held out | criterion (mean of 4) "
          "| files < 0.5 | mean over 49 domains | domains < 0.5 | significantly < 0.5 | ARC (eval only) "
          "| GPQA (eval only) | AlpacaEval (eval only) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def fmt(row: dict) -> str:
    cols = [row[f] for f in TRAIN_FILES] + [row["criterion"], row["files_below"], row["domain_mean"], row["below"],
                                            row["sig_below"], row["arc"], row["gpqa"], row["alpaca_eval"]]
    return f"| {row['name']} | " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cols) + " |"


def decide(rows: list[dict]) -> str:
    length, r5 = rows[0], rows[1]
    bar = max(length["criterion"], r5["criterion"]) + 0.01
    eligible = [r for r in rows[2:] if r["criterion"] >= bar and r["files_below"] <= r5["files_below"]]
    if not eligible:
        return (f"no eligible candidate (bar: criterion >= {bar:.4f} and files < 0.5 <= {r5['files_below']}): "
                "nothing ships")
    best = max(r["criterion"] for r in eligible)
    win = next(r for r in eligible if r["criterion"] >= best - 0.001)
    return f"eligible: {[r['name'] for r in eligible]}; winner: {win['name']} ({win['criterion']:.4f})"


def paired(rows: list[dict], scores: dict[str, np.ndarray], name: str, data: dataset.OutcomeData,
           pool: np.ndarray, boot: dict[str, list[np.ndarray]]) -> None:
    """Paired bootstrap of the criterion difference (``name`` minus each baseline) and significantly-low domains."""
    from classifiers import metrics

    files = {c: sorted(g for g in boot if g.split(":")[0].split("-")[0] == c) for c in TRAIN_FILES}

    def crit(v: np.ndarray, k: int | None) -> float:
        vals = []
        for c in TRAIN_FILES:
            i = np.concatenate([boot[g][k] if k is not None else np.nonzero((data.groups == g) & pool)[0]
                                for g in files[c]])
            vals.append(metrics.evaluate(v[i], data.weak[i], data.strong[i]).apgr)
        return float(np.mean(vals))

    new = next(n for n in scores if n.startswith(name))
    for base in ("prompt length (tokens)", "round-5 recipe (classifiers.train.fit)"):
        point = crit(scores[new], None) - crit(scores[base], None)
        diffs = [crit(scores[new], k) - crit(scores[base], k) for k in range(BOOT_PAIRED)]
        lo, hi = np.percentile(diffs, [5, 95])
        print(f"{new} minus {base}: {point:+.4f}, 90% interval [{lo:+.4f}, {hi:+.4f}], "
              f"P(diff < 0.01) = {np.mean(np.array(diffs) < 0.01):.2f}", flush=True)
    for n in (rows[0]["name"], rows[1]["name"], new):
        low = []
        for g, samples in boot.items():
            m = (data.groups == g) & pool
            if metrics.evaluate(scores[n][m], data.weak[m], data.strong[m]).apgr < 0.5:
                bs = [metrics.evaluate(scores[n][i], data.weak[i], data.strong[i]).apgr for i in samples]
                if np.nanpercentile(bs, 95) < 0.5:
                    low.append(g)
        print(f"significantly < 0.5, {n}: {low}", flush=True)


BOOT_PAIRED = 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None, help="run only the candidate whose name starts with this")
    ap.add_argument("--grouped", nargs="*", default=None,
                    help="also round 5's domain-grouped criterion for these rows ('length', 'round5', a letter)")
    ap.add_argument("--diagnostics", action="store_true", help="also the post-hoc rows (never eligible)")
    ap.add_argument("--table", default=None, help="per-domain LOCO table of length, round 5 and this row")
    ap.add_argument("--paired", default=None, help="paired bootstrap of this row's criterion against the baselines")
    args = ap.parse_args()
    np.seterr(all="ignore")
    data, X, length = load_all()
    X = X.astype(np.float64)
    pool = ~np.isin(data.sources, list(dataset.TRAINING_EXCLUDED_SOURCES))
    boot = bootstrap_indices(data, pool)
    print(f"{len(data)} rows, pool {int(pool.sum())}, LOCO over {TRAIN_FILES}", flush=True)

    def row(name: str, scores: np.ndarray) -> dict:
        r = summary(name, scores, data, pool, boot)
        r["files_below"] = int(sum(r[f] < 0.5 for f in TRAIN_FILES))
        return r

    fits: dict[str, Fit] = {"round-5 recipe (classifiers.train.fit)": round5}
    fits |= {name: label_fit(lab) for name, lab in LABELS.items()}
    rows = [row("prompt length (tokens)", length)]
    scores = {rows[0]["name"]: length}
    print(HEADER)
    print(fmt(rows[0]), flush=True)
    for name, fit in fits.items():
        if args.only and not (name.startswith(args.only) or name.startswith("round-5")):
            continue
        scores[name] = loco(fit, data, X, pool)
        rows.append(row(name, scores[name]))
        print(fmt(rows[-1]), flush=True)
    print("\nDecision:", decide(rows), flush=True)
    if args.paired:
        paired(rows, scores, args.paired, data, pool, boot)
    if args.diagnostics:
        print("\nPost-hoc diagnostics (LOCO; not candidates):")
        for name, lab in DIAGNOSTICS.items():
            rows.append(row(name, loco(label_fit(lab), data, X, pool)))
            print(fmt(rows[-1]), flush=True)
    if args.table:
        by = {r["name"]: r for r in rows}
        cols = ["prompt length (tokens)", "round-5 recipe (classifiers.train.fit)",
                next(n for n in by if n.startswith(args.table))]
        print(f"\n| held-out domain (LOCO) | n | prompt length | round-5 recipe | {cols[2]} | new - length "
              "| new - round 5 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for g in by[cols[0]]["per_domain"]:
            v = [by[c]["per_domain"][g] for c in cols]
            n = int(((data.groups == g) & pool).sum())
            diffs = f" | {v[2] - v[0]:+.3f} | {v[2] - v[1]:+.3f} |"
            print(f"| {g} | {n} | " + " | ".join(f"{a:.3f}" for a in v) + diffs)
    if args.grouped is not None:
        print("\nRound 5's domain-grouped protocol (52 folds):")
        print(HEADER.replace(" held out", ""))
        for key in args.grouped:
            if key == "length":
                print(fmt(row("prompt length (tokens)", length)), flush=True)
                continue
            name = next(n for n in fits if (key == "round5" and n.startswith("round-5")) or n.startswith(f"({key})"))
            print(fmt(row(name, grouped(fits[name], data, X, pool))), flush=True)


if __name__ == "__main__":
    main()
