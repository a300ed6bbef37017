"""Round 2: ideas not in RESULTS.md sections 1-2, on the exact same protocol.

    .venv/bin/python benchmarks/classifier/experiments_round2.py [--only SUBSTRING]

Protocol: fit only on MMLU DEV (classifiers/data/mmlu_dev.jsonl); classifiers.cv.out_of_fold
(one whole subject held out per fold), pooled out-of-fold scores, classifiers.metrics (RouteLLM's
APGR / CPT, cross-checked against shared/tools/route_eval.py by the tests). Columns:
"wins vs length" = folds whose within-subject APGR beats prompt length (tokens), as in the card;
"vs SHIPPED W/L" = folds where the candidate's within-subject APGR is higher / lower than the
shipped model's (27 folds with defined PGR). Anything chosen by a hyper-parameter is chosen by
nested grouped CV inside the training subjects only (never on the held-out subject), or is
labelled "(picked on test: optimistic)". Single-threaded.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import PolynomialFeatures, StandardScaler  # noqa: E402

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.features import FEATURE_NAMES, _option_block, featurize_many, split_request  # noqa: E402
from metering.tokens import count_text  # noqa: E402

# ---------------------------------------------------------------- candidate option/stem features
_NUM = re.compile(r"[-−]?\d+(?:[.,]\d+)*")
_UNITS = re.compile(r"\b(\d+\s*)?(m/s|km|kg|mol|J|K|Hz|N|Pa|eV|V|W|mL|L|cm|mm|nm|g|s|°C|%|\$)\b")
_NEG_WORDS = re.compile(r"\b(not|except|least|false|incorrect|cannot|never)\b", re.I)
_TF_OPT = re.compile(r"^(true|false|wrong|not wrong)\s*,\s*(true|false|wrong|not wrong)$", re.I)
_WORD = re.compile(r"[a-z]+")

EXTRA_NAMES = (
    "opt_max_jaccard",  # near-duplicate options (word-set Jaccard, max over pairs)
    "opt_mean_jaccard",
    "opt_log_num_mag",  # magnitude of numbers in options
    "opt_num_spread",  # relative spread of numeric options (close numbers need exact arithmetic)
    "stem_num_count",  # numbers in the stem
    "arith_needed",  # numbers in stem AND numeric options
    "units",  # physical units
    "neg_word_stem",  # lower-case negations too
    "tf_pair_options",  # "True, False" style options (statement pairs, moral scenarios)
    "passage_ratio",  # long passage + short final question: log(stem chars / last sentence chars)
    "opt_stem_overlap",  # share of option words that occur in the stem
    "opt_long_frac",  # options longer than 60 chars (explanations)
    "opt_max_over_min",  # log(longest / shortest option)
    "last_sentence_chars",  # log length of the actual question
)


def extra_features(text: str) -> list[float]:
    lines = text.split("\n")
    start, options = _option_block(lines)
    stem = "\n".join(lines[:start]).strip()
    stem_words = set(_WORD.findall(stem.lower()))
    opt_words = [set(_WORD.findall(o.lower())) for o in options]
    jac = []
    for i in range(len(opt_words)):
        for j in range(i + 1, len(opt_words)):
            a, b = opt_words[i], opt_words[j]
            if a or b:
                jac.append(len(a & b) / len(a | b))
    nums = []
    for o in options:
        m = _NUM.search(o)
        if m:
            try:
                nums.append(float(m.group().replace(",", "").replace("−", "-")))
            except ValueError:
                pass
    stem_nums = _NUM.findall(stem)
    numeric_opts = len(nums) >= max(2, len(options) - 1) if options else False
    spread = 0.0
    if len(nums) >= 2:
        mag = max(abs(v) for v in nums)
        spread = (max(nums) - min(nums)) / mag if mag > 0 else 0.0
    sentences = [x for x in re.split(r"(?<=[.?!])\s+", stem) if x.strip()]
    last = sentences[-1] if sentences else stem
    olens = [len(o) for o in options] or [0]
    all_opt_words = set().union(*opt_words) if opt_words else set()
    return [
        max(jac) if jac else 0.0,
        float(np.mean(jac)) if jac else 0.0,
        math.log1p(max(abs(v) for v in nums)) if nums else 0.0,
        spread,
        min(len(stem_nums), 20),
        float(numeric_opts and len(stem_nums) >= 2),
        min(len(_UNITS.findall(text)), 10),
        float(bool(_NEG_WORDS.search(last))),
        sum(1 for o in options if _TF_OPT.match(o.strip())) / len(options) if options else 0.0,
        math.log1p(len(stem)) - math.log1p(len(last)),
        len(all_opt_words & stem_words) / max(len(all_opt_words), 1),
        sum(1 for k in olens if k > 60) / len(olens),
        math.log((max(olens) + 1) / (min(olens) + 1)),
        math.log1p(len(last)),
    ]


# ---------------------------------------------------------------- selection
# A "family" maps (train mask, test mask, only) to {key: scores of the test rows} for every member (or just
# ``only``); members that share a fit are computed together.
Family = Callable[[np.ndarray, np.ndarray, Hashable | None], dict[Hashable, np.ndarray]]


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[rows] = True
    return m


def fixed_rows(family: Family, keys: list[Hashable], groups: np.ndarray) -> dict[Hashable, np.ndarray]:
    """Pooled out-of-fold scores of every member, one subject held out at a time (picking one is optimistic)."""
    out = {k: np.zeros(len(groups)) for k in keys}
    for g in sorted(set(groups.tolist())):
        test = groups == g
        for k, v in family(~test, test, None).items():
            out[k][test] = v
    return out


def nested_choice(family: Family, keys: list[Hashable], groups: np.ndarray, weak: np.ndarray, strong: np.ndarray,
                  picks: list[Hashable]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A fit_predict for ``cv.out_of_fold`` that picks, per outer fold, the member with the best pooled APGR under
    4-fold grouped CV on the training subjects only, and scores the held-out subject with it."""
    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        rows = np.nonzero(train)[0]
        inner = {k: np.zeros(len(groups)) for k in keys}
        for a, b in GroupKFold(n_splits=4).split(rows, groups=groups[rows]):
            inner_test = _mask(len(groups), rows[b])
            for k, v in family(_mask(len(groups), rows[a]), inner_test, None).items():
                inner[k][inner_test] = v
        best = max(keys, key=lambda k: metrics.evaluate(inner[k][rows], weak[rows], strong[rows]).apgr)
        picks.append(best)
        return family(train, test, best)[best]
    return fit_predict


# ---------------------------------------------------------------- harness
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()

    d = dataset.load(REPO / "classifiers" / "data", for_training=True)
    w, s, G = d.weak, d.strong, d.groups
    # Round-1 baseline: the 28 features shipped before this round (features.py now also computes
    # opt_dup_words, which is EXTRA_NAMES[0] below) and the stacked fit, so the table reproduces.
    X_all = featurize_many(d.messages).astype(np.float64)
    # Round 3 added opt_dup_trigrams (= cdup_cap[64] in the select block); it is left out here too.
    X = X_all[:, [i for i, n in enumerate(FEATURE_NAMES) if n not in ("opt_dup_words", "opt_dup_trigrams")]]
    assert X.shape[1] == 28
    X_r2 = X_all[:, [i for i, n in enumerate(FEATURE_NAMES) if n != "opt_dup_trigrams"]]  # round-2 shipped set
    texts = [split_request(m)[0] for m in d.messages]
    tokens = np.array([count_text(t) for t in texts], dtype=float)
    E = np.array([extra_features(t) for t in texts])
    XE = np.hstack([X, E])
    wf, sf = model.fails(w), model.fails(s)
    subjects = sorted(set(G.tolist()))

    def per_fold(oof: np.ndarray) -> np.ndarray:
        return np.array([metrics.evaluate(oof[G == g], w[G == g], s[G == g]).apgr for g in subjects])

    def stacked_round1(tr, te):
        wts = model.group_balanced_weights(G[tr])
        m = make_pipeline(StandardScaler(), LogisticRegression(C=model.C, max_iter=5000)).fit(
            np.vstack([X[tr], X[tr]]), np.concatenate([wf[tr], sf[tr]]),
            logisticregression__sample_weight=np.concatenate([wts, wts]))
        return m.decision_function(X[te])

    shipped = cv.out_of_fold(stacked_round1, G)
    ship_folds = per_fold(shipped)
    results: dict[str, np.ndarray] = {}

    def show(name: str, oof: np.ndarray, t0: float | None = None) -> None:
        r = cv.report(oof, tokens, w, s, G)
        p = r.pooled
        pf = per_fold(oof)
        ok = np.isfinite(ship_folds)
        wins, losses = int(np.sum(pf[ok] > ship_folds[ok])), int(np.sum(pf[ok] < ship_folds[ok]))
        dt = f" ({time.time() - t0:.0f} s)" if t0 else ""
        print(f"| {name} | {p.apgr:.3f} | {p.apgr - results_ship:+.3f} | {100 * p.cpt50:.1f}% | {100 * p.cpt80:.1f}% "
              f"| {r.wins}/{len(r.scored_folds)} | {wins}/{losses} |{dt}", flush=True)
        results[name] = oof

    def show_family(family: Family, grid: list[Hashable], row: Callable[[Hashable], str], nested_name: str,
                    t0: float) -> None:
        """Every member as a fixed row (optimistic), then the nested choice among them and its picks."""
        for key, oof in fixed_rows(family, grid, G).items():
            show(row(key), oof, t0)
        picks: list[Hashable] = []
        show(nested_name, cv.out_of_fold(nested_choice(family, grid, G, w, s, picks), G), t0)
        print(f"    nested picks: {Counter(picks).most_common()}")

    results_ship = metrics.evaluate(shipped, w, s).apgr
    print("| score | APGR | vs SHIPPED | CPT(50%) | CPT(80%) | wins vs length | vs SHIPPED W/L |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    show("prompt length (tokens)", tokens)
    show("round-1 SHIPPED (28 features, stacked 'a model fails', C=0.001, subject-balanced)", shipped)

    def want(tag: str) -> bool:
        return args.only in tag

    def stacked_fit(Xm, tr, C=model.C, weights=None, y2=None, pipe=None):
        """The shipped recipe with knobs: rows twice (weak fails, strong fails)."""
        wts = model.group_balanced_weights(G[tr]) if weights is None else weights[tr]
        est = pipe() if pipe else make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        last = est.steps[-1][0]
        ys = y2 if y2 is not None else (wf, sf)
        return est.fit(np.vstack([Xm[tr], Xm[tr]]), np.concatenate([ys[0][tr], ys[1][tr]]),
                       **{f"{last}__sample_weight": np.concatenate([wts, wts])})

    def dec(est, Xm):
        return est.decision_function(Xm) if hasattr(est, "decision_function") else est.predict_proba(Xm)[:, 1]

    # 1. Labels: average of separately fitted weak-fails / strong-fails models
    if want("label"):
        t0 = time.time()

        def avg(tr, te):
            outs = []
            for y in (wf, sf):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=model.C, max_iter=5000)).fit(
                    X[tr], y[tr], logisticregression__sample_weight=model.group_balanced_weights(G[tr]))
                z = m.decision_function(X[te])
                outs.append(z)
            return outs[0] + outs[1]
        show("label: logit average of separate weak-fails and strong-fails LRs", cv.out_of_fold(avg, G), t0)

        def rankavg(tr, te):
            outs = []
            for y in (wf, sf):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=model.C, max_iter=5000)).fit(
                    X[tr], y[tr], logisticregression__sample_weight=model.group_balanced_weights(G[tr]))
                # z-score with the training rows' distribution so the held-out subject's scores stay comparable
                ztr = m.decision_function(X[tr])
                outs.append((m.decision_function(X[te]) - ztr.mean()) / ztr.std())
            return outs[0] + outs[1]
        show("label: z-scored average of weak-fails and strong-fails LRs", cv.out_of_fold(rankavg, G), t0)

        # ordinal: number of models failing (0/1/2) as two thresholds = stacked; try "both fail" + "any fails"
        both = ((wf == 1) & (sf == 1)).astype(int)
        anyf = ((wf == 1) | (sf == 1)).astype(int)
        show("label: stacked 'any model fails' + 'both fail'",
             cv.out_of_fold(lambda tr, te: dec(stacked_fit(X, tr, y2=(anyf, both)), X[te]), G), t0)

    # 2. Weighting
    if want("weight"):
        t0 = time.time()
        _, inv, cnt = np.unique(G, return_inverse=True, return_counts=True)
        for name, raw in (("none", np.ones(len(G))), ("1/sqrt(subject size)", 1 / np.sqrt(cnt[inv])),
                          ("balanced, law capped", None)):
            if raw is None:
                continue
            wts = raw * len(G) / raw.sum()
            show(f"weights: {name}", cv.out_of_fold(lambda tr, te: dec(stacked_fit(X, tr, weights=wts), X[te]), G), t0)

    # 3. Regularisation: grid (optimistic) and nested grouped CV
    Cs = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1)
    if want("C"):
        t0 = time.time()
        for C in Cs:
            show(f"C={C:g} (fixed, each row picked on test: optimistic)",
                 cv.out_of_fold(lambda tr, te: dec(stacked_fit(X, tr, C=C), X[te]), G), t0)

        def nested(tr, te):
            tr_idx = np.nonzero(tr)[0]
            inner = GroupKFold(n_splits=7)
            best, best_c = -1.0, None
            for C in Cs:
                oof = np.zeros(len(tr_idx))
                for a, b in inner.split(tr_idx, groups=G[tr_idx]):
                    m_tr = np.zeros(len(G), bool); m_tr[tr_idx[a]] = True
                    oof[b] = dec(stacked_fit(X, m_tr, C=C), X[tr_idx[b]])
                ap_ = metrics.evaluate(oof, w[tr_idx], s[tr_idx]).apgr
                if ap_ > best:
                    best, best_c = ap_, C
            chosen.append(best_c)
            return dec(stacked_fit(X, tr, C=best_c), X[te])
        chosen: list[float] = []
        show("C by nested grouped CV (7 inner subject folds)", cv.out_of_fold(nested, G), t0)
        print(f"    nested C choices: {dict(zip(*np.unique(chosen, return_counts=True)))}")

    # 4. New option/stem features
    if want("feat"):
        t0 = time.time()
        show(f"SHIPPED + all {len(EXTRA_NAMES)} option/stem features",
             cv.out_of_fold(lambda tr, te: dec(stacked_fit(XE, tr), XE[te]), G), t0)
        for j, name in enumerate(EXTRA_NAMES):
            Xj = np.hstack([X, E[:, [j]]])
            show(f"SHIPPED + {name}", cv.out_of_fold(lambda tr, te: dec(stacked_fit(Xj, tr), Xj[te]), G))

    # 5. Within-subject (fixed-effects) fit: demean features and labels' subject rate removed
    if want("within"):
        t0 = time.time()

        def within(tr, te, Xm=X):
            Xd = Xm.copy()
            for g in set(G[tr].tolist()):
                m = G == g
                Xd[m] -= Xm[m].mean(axis=0)
            est = stacked_fit(Xd, tr)
            sc = est.named_steps["standardscaler"]; lr = est.named_steps["logisticregression"]
            coef = lr.coef_[0] / sc.scale_
            return Xm[te] @ coef  # within-subject slopes applied to raw features
        show("within-subject fit (subject-demeaned features), slopes on raw features", cv.out_of_fold(within, G), t0)

        def fe(tr, te):
            # subject dummies absorb subject difficulty (conditional-logit style); dropped at prediction
            tr_g = sorted(set(G[tr].tolist()))
            D = np.stack([(G == g).astype(float) for g in tr_g], axis=1)
            sc = StandardScaler().fit(X[tr])
            Z = np.hstack([sc.transform(X), D * 10.0])  # large scale = weakly penalised dummies
            wts = model.group_balanced_weights(G[tr])
            lr = LogisticRegression(C=model.C, max_iter=5000).fit(
                np.vstack([Z[tr], Z[tr]]), np.concatenate([wf[tr], sf[tr]]), sample_weight=np.concatenate([wts, wts]))
            return sc.transform(X[te]) @ lr.coef_[0][: X.shape[1]]
        show("subject fixed effects in training, dropped at prediction", cv.out_of_fold(fe, G), t0)

    # 4b. The near-duplicate-options family, and an honest (nested) selection of the extra features
    if want("dup"):
        t0 = time.time()

        def grams(o: str) -> set[str]:
            o = o.lower()
            return {o[i:i + 3] for i in range(max(len(o) - 2, 1))}

        def dup_variants(text: str) -> list[float]:
            lines = text.split("\n")
            _, options = _option_block(lines)
            ws = [set(_WORD.findall(o.lower())) for o in options]
            cs = [grams(o) for o in options]
            wj, cj = [], []
            for i in range(len(options)):
                for j in range(i + 1, len(options)):
                    if ws[i] or ws[j]:
                        wj.append(len(ws[i] & ws[j]) / len(ws[i] | ws[j]))
                    cj.append(len(cs[i] & cs[j]) / max(len(cs[i] | cs[j]), 1))
            return [max(cj) if cj else 0.0, sum(1 for v in wj if v >= 0.5) / max(len(wj), 1) if wj else 0.0]

        V = np.array([dup_variants(t) for t in texts])
        for name, cols in (("opt_max_jaccard + opt_mean_jaccard", [E[:, 0], E[:, 1]]),
                           ("char-3gram max Jaccard of options", [V[:, 0]]),
                           ("share of option pairs with word Jaccard >= 0.5", [V[:, 1]])):
            Xv = np.hstack([X, np.column_stack(cols)])
            show(f"SHIPPED + {name}", cv.out_of_fold(lambda tr, te: dec(stacked_fit(Xv, tr), Xv[te]), G), t0)
        Xj = np.hstack([X, E[:, [0]]])

        def zavg(tr, te, Xm=Xj):
            outs = []
            for y in (wf, sf):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=model.C, max_iter=5000)).fit(
                    Xm[tr], y[tr], logisticregression__sample_weight=model.group_balanced_weights(G[tr]))
                ztr = m.decision_function(Xm[tr])
                outs.append((m.decision_function(Xm[te]) - ztr.mean()) / ztr.std())
            return outs[0] + outs[1]
        show("SHIPPED + opt_max_jaccard, z-scored weak/strong LR average", cv.out_of_fold(zavg, G), t0)

        # Honest version: inside each outer fold, greedy forward selection of up to 2 of the 14 extra
        # features by 4-fold grouped CV on the training subjects only (add while inner APGR gains >= 0.002).
        picks: list[tuple[str, ...]] = []

        def nested_select(tr, te):
            tr_idx = np.nonzero(tr)[0]
            folds = list(GroupKFold(n_splits=4).split(tr_idx, groups=G[tr_idx]))

            def inner(cols):
                Xm = np.hstack([X, E[:, cols]]) if cols else X
                oof = np.zeros(len(tr_idx))
                for a, b in folds:
                    m_tr = np.zeros(len(G), bool); m_tr[tr_idx[a]] = True
                    oof[b] = dec(stacked_fit(Xm, m_tr), Xm[tr_idx[b]])
                return metrics.evaluate(oof, w[tr_idx], s[tr_idx]).apgr
            chosen_cols: list[int] = []
            best = inner(chosen_cols)
            for _ in range(2):
                cand = [(inner(chosen_cols + [j]), j) for j in range(E.shape[1]) if j not in chosen_cols]
                score, j = max(cand)
                if score < best + 0.002:
                    break
                best, chosen_cols = score, chosen_cols + [j]
            picks.append(tuple(EXTRA_NAMES[j] for j in chosen_cols))
            Xm = np.hstack([X, E[:, chosen_cols]]) if chosen_cols else X
            return dec(stacked_fit(Xm, tr), Xm[te])
        show("SHIPPED + extra features chosen by nested grouped forward selection", cv.out_of_fold(nested_select, G), t0)
        print(f"    nested picks: {Counter(picks).most_common()}")

    # 4c. Is the near-duplicate-options gain real once the choice among the variants is made honestly?
    # Inside each outer fold, pick one of 8 configurations (feature set x label) by 4-fold grouped CV
    # on the training subjects only, then fit it on all training subjects and score the held-out one.
    if want("select") or "select" in args.only:
        t0 = time.time()

        def g3(o: str) -> set[str]:
            o = o.lower()
            return {o[i:i + 3] for i in range(max(len(o) - 2, 1))}

        def char_dup(text: str) -> float:
            _, options = _option_block(text.split("\n"))
            cs = [g3(o) for o in options]
            v = [len(cs[i] & cs[j]) / max(len(cs[i] | cs[j]), 1) for i in range(len(cs)) for j in range(i + 1, len(cs))]
            return max(v) if v else 0.0

        def char_dup_capped(text: str, cap: int) -> float:
            _, options = _option_block(text.split("\n"))
            cs = [g3(o[:cap]) for o in options]
            v = [len(cs[i] & cs[j]) / max(len(cs[i] | cs[j]), 1) for i in range(len(cs)) for j in range(i + 1, len(cs))]
            return max(v) if v else 0.0

        cdup = np.array([char_dup(t) for t in texts])[:, None]
        fsets = {"28": X, "+word": np.hstack([X, E[:, [0]]]), "+char": np.hstack([X, cdup]),
                 "+word+char": np.hstack([X, E[:, [0]], cdup])}
        # Round 3: the char-trigram feature on the first `cap` characters of each option (cap 64 fixed
        # at 64 for latency before any quality was seen: it costs about what the word-set feature does,
        # ~20 us on 200-char law options vs ~60 us uncapped). Same values as the uncapped feature for
        # options up to 64 chars (70% of MMLU options).
        cdup_cap = {cap: np.array([char_dup_capped(t, cap) for t in texts])[:, None] for cap in (48, 64, 96)}
        fsets |= {"+char64": np.hstack([X, cdup_cap[64]]), "+word+char64": np.hstack([X, E[:, [0]], cdup_cap[64]])}

        def zavg_fit_pred(Xm, tr, te):
            outs = []
            for y in (wf, sf):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=model.C, max_iter=5000)).fit(
                    Xm[tr], y[tr], logisticregression__sample_weight=model.group_balanced_weights(G[tr]))
                ztr = m.decision_function(Xm[tr])
                outs.append((m.decision_function(Xm[te]) - ztr.mean()) / ztr.std())
            return outs[0] + outs[1]

        def run(cfg, tr, te):
            Xm = fsets[cfg[0]]
            return dec(stacked_fit(Xm, tr), Xm[te]) if cfg[1] == "stacked" else zavg_fit_pred(Xm, tr, te)

        all_cfgs = [(f, lab) for f in fsets for lab in ("stacked", "zavg")]
        cfgs = [c for c in all_cfgs if c[0] in ("28", "+word", "+char", "+word+char")]
        if "fast" in args.only:
            # The char-trigram feature costs ~0.15 ms on 200-char options (p50 over budget on 2k-token
            # prompts), so the same nested choice restricted to the configurations that fit the budget.
            cfgs = [c for c in cfgs if "char" not in c[0]]
        for cfg in ([] if "fast" in args.only else cfgs[2:]):
            if cfg[0] in ("+char", "+word+char"):
                show(f"features {cfg[0]}, label {cfg[1]} (fixed; a post-hoc variant)",
                     cv.out_of_fold(lambda tr, te: run(cfg, tr, te), G), t0)
        if "fast" in args.only:
            for cap in (48, 64, 96):
                for base, name in ((X, "28"), (np.hstack([X, E[:, [0]]]), "+word")):
                    Xc = np.hstack([base, cdup_cap[cap]])
                    show(f"features {name} + char-trigram capped at {cap} chars, label zavg (fixed)",
                         cv.out_of_fold(lambda tr, te: zavg_fit_pred(Xc, tr, te), G), t0)
        sel: list[tuple[str, str]] = []

        def nested(cfgs):
            return nested_choice(lambda tr, te, only: {c: run(c, tr, te) for c in cfgs if only in (None, c)},
                                 cfgs, G, w, s, sel)
        if "fast" in args.only:
            show("round-2 SHIPPED = features +word (opt_dup_words), label z-avg; via classifiers.model.fit",
                 cv.out_of_fold(lambda tr, te: model.decision(model.fit(X_r2[tr], w[tr], s[tr], G[tr]), X_r2[te]), G), t0)
            show("round-3 SHIPPED = features +word+char64 (opt_dup_words, opt_dup_trigrams), label z-avg; via classifiers.model.fit",
                 cv.out_of_fold(lambda tr, te: model.decision(model.fit(X_all[tr], w[tr], s[tr], G[tr]), X_all[te]), G), t0)
            assert np.array_equal(X_all[:, FEATURE_NAMES.index("opt_dup_trigrams")], cdup_cap[64][:, 0].astype(np.float32)), \
                "features.py's opt_dup_trigrams differs from the experiment's capped char-trigram feature"
        show(f"nested choice among {len(cfgs)} configs ({'/'.join(sorted({c[0] for c in cfgs}, key=list(fsets).index))} x stacked/z-avg label)",
             cv.out_of_fold(nested(cfgs), G), t0)
        print(f"    nested choices: {Counter(sel).most_common()}")
        if "fast" in args.only:
            # Round 3: the latency-feasible choice including the capped char-trigram variants.
            cfgs3 = [c for c in all_cfgs if c[0] in ("28", "+word", "+char64", "+word+char64")]
            sel.clear()
            show(f"nested choice among {len(cfgs3)} configs (28/+word/+char64/+word+char64 x stacked/z-avg label)",
                 cv.out_of_fold(nested(cfgs3), G), t0)
            print(f"    nested choices: {Counter(sel).most_common()}")

    # 7. Round 3 (on the round-3 shipped 30 features): weight of the strong-fails fit in the z-scored sum,
    # z(weak fails) + a * z(strong fails), and the L2 C of both fits; each chosen by nested grouped CV.
    if want("zweight"):
        t0 = time.time()

        def zparts(tr, te_list, C=model.C):
            outs = []
            for y in (wf, sf):
                m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)).fit(
                    X_all[tr], y[tr], logisticregression__sample_weight=model.group_balanced_weights(G[tr]))
                ztr = m.decision_function(X_all[tr])
                outs.append([(m.decision_function(X_all[te]) - ztr.mean()) / ztr.std() for te in te_list])
            return outs

        grid = [(a, C) for C in (3e-4, 1e-3, 3e-3) for a in (0.5, 1.0, 2.0)]

        def family(tr, te, only=None):
            out = {}
            for C in sorted({c for _, c in grid}):
                if only is not None and only[1] != C:
                    continue
                (zw,), (zs,) = zparts(tr, [te], C)
                for a, c in grid:
                    if c == C and (only is None or only == (a, c)):
                        out[(a, c)] = zw + a * zs
            return out
        show_family(family, grid, lambda k: f"z(weak fails) + {k[0]:g} x z(strong fails), C={k[1]:g} (fixed: optimistic)",
                    "(a, C) by nested grouped CV (4 inner subject folds)", t0)

    # 8. Round 3: answer-only computation. Every question with (mostly) numeric options lands in the top 30% of
    # the difficulty score, but both models fail many of them (MMLU answers without chain of thought): gain
    # 0.13 there vs 0.20 for the other top-30% questions. Score = z-sum + b x computation signal, b <= 0, the
    # signal and b chosen by nested grouped CV (b = 0 is a candidate, i.e. "leave it alone").
    if want("compute"):
        t0 = time.time()
        j = FEATURE_NAMES.index("opt_numeric_frac")
        signals = {"numeric options >= 75%": (X_all[:, j] >= 0.75).astype(float), "numeric option share": X_all[:, j],
                   "numeric options and a calc cue": ((X_all[:, j] >= 0.75) & (X_all[:, FEATURE_NAMES.index("calc_cues")] > 0)).astype(float)}
        bs = (0.0, -0.5, -1.0, -2.0)
        grid = [(sig, b) for sig in signals for b in bs if b != 0.0] + [("none", 0.0)]

        def base(tr, te):
            return model.decision(model.fit(X_all[tr], w[tr], s[tr], G[tr]), X_all[te])

        def family(tr, te, only=None):
            z = base(tr, te)
            return {k: z + k[1] * (signals[k[0]][te] if k[0] != "none" else 0.0)
                    for k in grid if only is None or only == k}
        show_family(family, grid, lambda k: f"round-3 z-sum + {k[1]:g} x [{k[0]}] (fixed: optimistic)",
                    "(signal, b) by nested grouped CV (4 inner subject folds)", t0)

    # 9. Round 4: vocabulary rarity / specialisation (hypothesis fixed before any number: questions written in
    # rare, specialised words are harder across subjects). Candidates on the truncated request text (as the other
    # content features), with o200k_base (metering.tokens.encoding_for("gpt-4o")); each added to the round-3 30
    # features with the shipped z-sum fit (classifiers.model.fit), then a nested choice among
    # {shipped, +each, +best pair} exactly like selectfast (4 inner subject folds, picked per outer fold).
    if want("rarity"):
        t0 = time.time()

        from classifiers.features import _WORDS_ONLY, truncate
        from metering.tokens import encoding_for

        enc = encoding_for("gpt-4o")
        word_tokens: dict[str, int] = {}

        def rarity(text: str) -> list[float]:
            t = truncate(text)
            ids = enc.encode_ordinary(t)
            n_words = max(len(t.split()), 1)
            # alphabetic words of >= 4 letters, lower-cased (capitalisation is not rarity), encoded as they
            # appear mid-sentence (" word", one o200k pre-token)
            long_words = [x for x in t.lower().translate(_WORDS_ONLY).split() if len(x) >= 4 and x.isalpha()]
            k2 = k3 = 0
            for x in long_words:
                k = word_tokens.get(x)
                if k is None:
                    k = word_tokens[x] = len(enc.encode_ordinary(" " + x))
                k2 += k >= 2
                k3 += k >= 3
            nl = max(len(long_words), 1)
            return [len(ids) / n_words, k2 / nl, k3 / nl,
                    sum(map(math.log1p, ids)) / len(ids) if ids else 0.0]

        R_NAMES = ("tok_per_word", "multi_tok_word_frac (>= 2 tokens)", "multi3_tok_word_frac (>= 3 tokens)",
                   "mean_log_token_id")
        R = np.array([rarity(t) for t in texts])
        print(f"    rarity features computed in {time.time() - t0:.0f} s; "
              f"corr with mean_word_len / long_word_frac: "
              + ", ".join(f"{n.split()[0]} {np.corrcoef(R[:, j], X_all[:, FEATURE_NAMES.index('mean_word_len')])[0, 1]:.2f}"
                          f"/{np.corrcoef(R[:, j], X_all[:, FEATURE_NAMES.index('long_word_frac')])[0, 1]:.2f}"
                          for j, n in enumerate(R_NAMES)))
        for j, n in enumerate(R_NAMES):
            rw = np.corrcoef(R[:, j], wf)[0, 1]; rs = np.corrcoef(R[:, j], sf)[0, 1]
            # within-subject correlation (subject means removed) with "weak fails"
            Rd = R[:, j].copy(); yd = wf.astype(float).copy()
            for g in subjects:
                m = G == g
                Rd[m] -= Rd[m].mean(); yd[m] -= yd[m].mean()
            print(f"    {n}: mean {R[:, j].mean():.3f} sd {R[:, j].std():.3f}; corr weak-fails {rw:+.3f}, "
                  f"strong-fails {rs:+.3f}, within-subject weak-fails {np.corrcoef(Rd, yd)[0, 1]:+.3f}")

        def zfit(Xm, tr, te):
            return model.decision(model.fit(Xm[tr], w[tr], s[tr], G[tr]), Xm[te])

        r3 = cv.out_of_fold(lambda tr, te: zfit(X_all, tr, te), G)
        r3_ap, r3_folds = metrics.evaluate(r3, w, s).apgr, per_fold(r3)

        def show4(name: str, oof: np.ndarray) -> float:
            r = cv.report(oof, tokens, w, s, G)
            pf = per_fold(oof)
            ok = np.isfinite(r3_folds)
            print(f"| {name} | {r.pooled.apgr:.4f} | {r.pooled.apgr - r3_ap:+.4f} | {100 * r.pooled.cpt50:.2f}% "
                  f"| {100 * r.pooled.cpt80:.1f}% | {r.wins}/{len(r.scored_folds)} "
                  f"| {int(np.sum(pf[ok] > r3_folds[ok]))}/{int(np.sum(pf[ok] < r3_folds[ok]))} | ({time.time() - t0:.0f} s)",
                  flush=True)
            return r.pooled.apgr

        print("\n| score | APGR | vs R3 | CPT(50%) | CPT(80%) | wins vs length | vs R3 W/L |\n|---|---:|---:|---:|---:|---:|---:|")
        show4("round-3 SHIPPED (30 features, z-sum), classifiers.model.fit", r3)
        fsets4 = {"30": X_all}
        single = {}
        for j, n in enumerate(R_NAMES):
            Xm = np.hstack([X_all, R[:, [j]]])
            single[j] = show4(f"30 + {n} (fixed)", cv.out_of_fold(lambda tr, te: zfit(Xm, tr, te), G))
            fsets4[f"+{n.split()[0]}"] = Xm
        # The pair: the two best single rows (chosen on the held-out scores above: the pair's identity is
        # optimistic; the nested row below then chooses honestly among the listed configurations).
        a, b = sorted(single, key=single.get, reverse=True)[:2]
        Xp = np.hstack([X_all, R[:, [a, b]]])
        pair = f"+{R_NAMES[a].split()[0]}+{R_NAMES[b].split()[0]}"
        show4(f"30 + {R_NAMES[a].split()[0]} + {R_NAMES[b].split()[0]} (best two singles, fixed)",
              cv.out_of_fold(lambda tr, te: zfit(Xp, tr, te), G))
        fsets4[pair] = Xp
        Xall4 = np.hstack([X_all, R])
        show4("30 + all four (fixed; not in the nested set)", cv.out_of_fold(lambda tr, te: zfit(Xall4, tr, te), G))
        sel4: list[str] = []
        family4 = lambda tr, te, only: {k: zfit(Xm, tr, te) for k, Xm in fsets4.items() if only in (None, k)}  # noqa: E731
        nested_oof = cv.out_of_fold(nested_choice(family4, list(fsets4), G, w, s, sel4), G)
        show4(f"nested choice among {len(fsets4)} configs ({' / '.join(fsets4)}; 4 inner subject folds)", nested_oof)
        print(f"    nested choices: {Counter(sel4).most_common()}")
        rng = np.random.default_rng(0)
        diffs = []
        for _ in range(200):
            pick = rng.choice(subjects, size=len(subjects), replace=True)
            idx = np.concatenate([np.nonzero(G == g)[0] for g in pick])
            diffs.append(metrics.evaluate(nested_oof[idx], w[idx], s[idx]).apgr - metrics.evaluate(r3[idx], w[idx], s[idx]).apgr)
        print(f"    subject bootstrap (200) of nested - R3 APGR: mean {np.mean(diffs):+.4f}, sd {np.std(diffs):.4f}, "
              f"P(<=0) {np.mean(np.array(diffs) <= 0):.2f}")

    # 6. Interactions and monotone GBM
    if want("inter"):
        t0 = time.time()
        for C in (1e-4, 3e-4, 1e-3):
            pipe = lambda C=C: make_pipeline(StandardScaler(), PolynomialFeatures(2, interaction_only=True, include_bias=False),
                                             StandardScaler(), LogisticRegression(C=C, max_iter=5000))
            show(f"pairwise interactions (406 terms) LR C={C:g}",
                 cv.out_of_fold(lambda tr, te: dec(stacked_fit(X, tr, pipe=pipe), X[te]), G), t0)
    if want("gbm"):
        t0 = time.time()
        # monotone +1 on length/structure/math features where "more" should mean harder
        inc = {"log_chars", "log_words", "log_stem_chars", "opt_numeric_frac", "math_sym_rate", "latex_or_formula",
               "calc_cues", "reason_cues", "statement_pair", "neg_stem"}
        cst = [1 if n in inc else 0 for n in FEATURE_NAMES]
        for depth, it, leaf in ((2, 100, 300), (3, 60, 500)):
            pipe = lambda depth=depth, it=it, leaf=leaf: make_pipeline(HistGradientBoostingClassifier(
                max_depth=depth, max_iter=it, learning_rate=0.05, min_samples_leaf=leaf, l2_regularization=10.0,
                monotonic_cst=cst, random_state=0))
            gb = cv.out_of_fold(lambda tr, te: dec(stacked_fit(X, tr, pipe=pipe), X[te]), G)
            show(f"monotone HGB depth {depth}, {it} rounds, min leaf {leaf}, l2 10", gb, t0)
            # blend with the shipped LR on the logit scale (equal weights, not tuned)
            lg = np.log(np.clip(gb, 1e-6, 1 - 1e-6) / (1 - np.clip(gb, 1e-6, 1 - 1e-6)))
            show("  blend: SHIPPED logit + that HGB logit", shipped + lg, t0)


if __name__ == "__main__":
    main()
