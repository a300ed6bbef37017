"""Round 5 (issue 12): a default model trained on every permitted routing-outcome file, chosen by domain-grouped CV.

    .venv/bin/python benchmarks/classifier/experiments_broad.py [--only TAG] [--table]

Protocol (fixed before any number was seen; RESULTS.md section 10):
- Rows: every file of ../shared/data/routing. Training pool = rows not in
  ``classifiers.dataset.TRAINING_EXCLUDED_SOURCES`` (AlpacaEval, LLMRouter NQ/ARC/GPQA: licence
  and terms), i.e. MMLU (29 subjects), MMLU-Pro (14 categories), MATH level 5, and 8 LLMRouter tasks.
- CV: one whole domain held out per fold (MMLU subject, MMLU-Pro category, LLMRouter task, the MATH
  file; 52 folds); a fold never trains on a copy of a held-out question (``meta.dev_duplicates``).
  Labels (IRT fits, within-collection z-scores) are computed from the training rows of each fold.
- Selection criterion: the unweighted mean over the four training files (mmlu, mmlu_pro, math_l5,
  llmrouter) of the pooled out-of-fold APGR on that file. Every candidate's score on the criterion
  is reported; the winner is the best (this is selection on the same folds: optimistic by the
  spread among close candidates).
- Evaluation only, never selected on: AlpacaEval (CC BY-NC) and the excluded LLMRouter tasks,
  scored by the model fitted on the whole training pool.
- Baselines on the same rows: prompt length in tokens (the request turn), and the round-3 shipped model
  (fitted on MMLU only: in-sample on MMLU, unseen elsewhere), scored by ``tiergate score`` at commit
  71c13ba (extracted with ``git archive`` into a temporary directory).
Single-threaded (OMP_NUM_THREADS=1); ~3 minutes for everything on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from classifiers import cv, dataset, metrics, model
from classifiers.features import FEATURE_NAMES, featurize_many, split_request
from text.tokens import count_text

SHARED = REPO.parent / "shared" / "data" / "routing"
CACHE = Path(tempfile.gettempdir()) / "tiergate_broad"
ROUND3 = "71c13ba"
TRAIN_FILES = ("mmlu", "mmlu_pro", "math_l5", "llmrouter")


def _features_key() -> str:
    return hashlib.sha256((REPO / "classifiers" / "features.py").read_bytes()).hexdigest()[:12]


def load_all() -> tuple[dataset.OutcomeData, np.ndarray, np.ndarray]:
    """All rows of the shared folder, their features (cached per features.py version) and prompt lengths."""
    data = dataset.load(SHARED)
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"X_{_features_key()}_{len(data)}.npy"
    if path.exists():
        X = np.load(path)
    else:
        X = featurize_many(data.messages)
        np.save(path, X)
    lpath = CACHE / f"len_{len(data)}.npy"
    if lpath.exists():
        length = np.load(lpath)
    else:
        length = np.array([count_text(split_request(m)[0]) for m in data.messages], dtype=np.float64)
        np.save(lpath, length)
    return data, X, length


def round3_scores(data: dataset.OutcomeData) -> np.ndarray:
    """Scores of the round-3 shipped model (MMLU only), through its own ``tiergate score`` at commit 71c13ba."""
    path = CACHE / f"round3_{len(data)}.npy"
    if path.exists():
        return np.load(path)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ROUND3, "classifiers", "metering"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        requests = Path(tmp) / "in.jsonl"
        requests.write_text("".join(json.dumps({"id": i, "messages": m}) + "\n" for i, m in enumerate(data.messages)))
        code = ("import argparse, sys; from classifiers.cli import cmd_score; "
                "cmd_score(argparse.Namespace(inp=sys.argv[1], out=sys.argv[2], model=None))")
        subprocess.run([sys.executable, "-c", code, str(requests), str(Path(tmp) / "out.jsonl")], cwd=tmp, check=True,
                       env={**os.environ, "PYTHONPATH": tmp}, capture_output=True)
        scores = np.array([json.loads(line)["score"] for line in (Path(tmp) / "out.jsonl").read_text().splitlines()])
    np.save(path, scores)
    return scores


# ------------------------------------------------------------------------------------------------ candidates


def make_fit(label: str, weighting: str, alpha: float, drop: tuple[str, ...] = (), free: tuple[str, ...] = (),
             exclude: tuple[str, ...] = ()) -> Callable:
    """fit(data, X, y) -> decision function, for one configuration of the default model (``y``: the label)."""

    def fit(d: dataset.OutcomeData, X: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        weights = model.balanced_weights(d.groups, d.collections if weighting == "collection" else None)
        if label == "pair_lr":  # round 3's recipe: z-sum of two logistic regressions on the pair's failures
            return model.fit_pair_logistic(X, d.weak, d.strong, weights, drop=drop).decision
        return model.fit_linear(X, y, weights, alpha, drop=drop, free=free).decision

    fit.label = label  # type: ignore[attr-defined]
    fit.exclude = exclude  # type: ignore[attr-defined]
    return fit


_TARGETS: dict[str, np.ndarray] = {}


def run_cv(fit: Callable, data: dataset.OutcomeData, X: np.ndarray, pool: np.ndarray,
           per_fold_labels: bool = False) -> np.ndarray:
    """Out-of-fold scores on the pool (domain held out, duplicates excluded) and full-pool scores elsewhere.

    Labels are computed once on the whole pool unless ``per_fold_labels`` (then from each fold's
    training rows only: the IRT abilities and z-scores then never see a held-out row; slower).
    """
    excluded = getattr(fit, "exclude", ())
    pool = pool & ~np.isin(data.sources, excluded)
    sub = data.subset(pool)
    Xp = X[pool]
    label = getattr(fit, "label", "pair_lr")
    key = (label, excluded)
    if label == "pair_lr":
        y = np.zeros(len(sub))
    elif key not in _TARGETS:
        y = _TARGETS[key] = model.target(sub, label)
    else:
        y = _TARGETS[key]

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        d = sub.subset(train)
        y_train = model.target(d, label) if per_fold_labels and label != "pair_lr" else y[train]
        return fit(d, Xp[train], y_train)(Xp[test])

    scores = np.zeros(len(data))
    scores[pool] = cv.out_of_fold(fit_predict, sub.groups, sub.ids, sub.duplicates)
    scores[~pool] = fit(sub, Xp, y)(X[~pool])  # never trained on: scored by the model of the whole pool
    return scores


def file_of(data: dataset.OutcomeData) -> np.ndarray:
    return data.collections


def summary(name: str, scores: np.ndarray, data: dataset.OutcomeData, pool: np.ndarray) -> dict:
    files = file_of(data)
    out = {"name": name}
    for f in (*TRAIN_FILES, "alpaca_eval"):
        m = (files == f) & (pool if f in TRAIN_FILES else True)
        out[f] = metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
    out["criterion"] = float(np.mean([out[f] for f in TRAIN_FILES]))
    for task in ("arc", "gpqa"):
        m = data.sources == f"llmrouter-{task}"
        out[task] = metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
    doms = [metrics.evaluate(scores[m], data.weak[m], data.strong[m]).apgr
            for g in sorted(set(data.groups[pool].tolist())) for m in [(data.groups == g) & pool]]
    doms = [a for a in doms if np.isfinite(a)]
    out["domain_mean"] = float(np.mean(doms))
    out["domains_below_random"] = int(sum(a < 0.5 for a in doms))
    return out


def fmt(row: dict) -> str:
    cols = [row[f] for f in TRAIN_FILES] + [row["criterion"], row["domain_mean"], row["domains_below_random"],
                                            row["arc"], row["gpqa"], row["alpaca_eval"]]
    cells = (f"{c:.{DIGITS}f}" if isinstance(c, float) else str(c) for c in cols)
    return f"| {row['name']} | " + " | ".join(cells) + " |"


DIGITS = 3
HEADER = ("| score | MMLU | MMLU-Pro | MATH L5 | LLMRouter (8 tasks) | criterion (mean of 4) | mean over domains "
          "| domains < 0.5 | ARC (eval only) | GPQA (eval only) | AlpacaEval (eval only) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

DROPS = {
    "the option block": tuple(n for n in FEATURE_NAMES if n.startswith("opt_") or n in (
        "has_options", "log_options", "statement_pair", "neg_stem")),
    "question type": ("ask_fact", "ask_explain", "ask_produce"),
    "cue counts": ("log_constraint_cues", "log_step_cues", "log_calc_cues", "log_reason_cues", "log_judgement_cues"),
    "prose": ("mean_word_len", "long_word_frac", "quote_rate", "non_ascii_frac"),
    "layout": ("log_lines", "log_sentences", "log_paragraphs", "log_list_items", "log_questions"),
}

CANDIDATES: dict[str, dict[str, Callable]] = {
    "label": {
        f"{label}, domain-balanced, alpha {a:g}": make_fit(label, "domain", a)
        for label in ("irt", "mean_failure", "pair", "gap")
        for a in (3e3, 1e4)
    },
    "weight": {"irt, collection-balanced, alpha 10000": make_fit("irt", "collection", 1e4)},
    "pairlr": {"pair_lr (round-3 recipe: z-sum of weak-fails and strong-fails LRs, C=0.001), domain-balanced":
               make_fit("pair_lr", "domain", 0.0)},
    "drop": {f"irt, alpha 10000, without {name}": make_fit("irt", "domain", 1e4, drop) for name, drop in DROPS.items()},
    "free": {"irt, alpha 10000, log_chars unpenalised": make_fit("irt", "domain", 1e4, free=("log_chars",))},
    "trivia": {"irt, alpha 10000, TriviaQA rows not trained on": make_fit("irt", "domain", 1e4,
                                                                          exclude=("llmrouter-triviaqa",))},
}


def per_domain_table(data: dataset.OutcomeData, X: np.ndarray, length: np.ndarray, pool: np.ndarray) -> None:
    """APGR per collection and per domain of prompt length, the round-3 model and the shipped recipe.

    The shipped recipe's scores are ``classifiers.train.out_of_fold`` on the pool (labels re-fitted in every
    fold, exactly as ``tiergate train`` reports them) and the full-pool fit on the evaluation-only rows.
    """
    from classifiers.train import fit as default_fit
    from classifiers.train import out_of_fold

    sub = data.subset(pool)
    new = np.zeros(len(data))
    new[pool] = out_of_fold(sub, X[pool].astype(np.float64))
    new[~pool] = default_fit(sub, X[pool].astype(np.float64)).decision(X[~pool])
    old = round3_scores(data)
    rows = [(f"**{c}** (pooled)", (data.collections == c) & pool) for c in TRAIN_FILES]
    rows += [(g, data.groups == g) for g in sorted(set(data.groups.tolist()))]
    print("| domain | n | oracle | prompt length | round-3 model | new model | new - length | new - round 3 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in rows:
        w, s = data.weak[m], data.strong[m]
        a = [metrics.evaluate(v[m], w, s).apgr for v in (data.strong - data.weak, length, old, new)]
        note = "" if pool[m].all() else " (eval only)"
        print(f"| {name}{note} | {int(m.sum())} | " + " | ".join(f"{v:.3f}" for v in a)
              + f" | {a[3] - a[1]:+.3f} | {a[3] - a[2]:+.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--digits", type=int, default=3)
    ap.add_argument("--table", action="store_true",
                    help="per-domain table: prompt length, round-3 model, the shipped recipe (classifiers.train)")
    args = ap.parse_args()
    global DIGITS
    DIGITS = args.digits
    np.seterr(all="ignore")
    data, X, length = load_all()
    pool = ~np.isin(data.sources, list(dataset.TRAINING_EXCLUDED_SOURCES))
    print(f"{len(data)} rows, pool {int(pool.sum())}, {len(set(data.groups[pool].tolist()))} domains, "
          f"{len(FEATURE_NAMES)} features")
    if args.table:
        per_domain_table(data, X, length, pool)
        return
    print(HEADER)
    print(fmt(summary("prompt length (tokens)", length, data, pool)))
    print(fmt(summary("round-3 shipped model (MMLU only; in-sample on MMLU)", round3_scores(data), data, pool)))
    for tag, cands in CANDIDATES.items():
        if args.only and args.only != tag:
            continue
        for name, fit in cands.items():
            print(fmt(summary(name, run_cv(fit, data, X, pool), data, pool)), flush=True)


if __name__ == "__main__":
    main()
