"""``tiergate learn`` on samples of one domain, evaluated on the rest of that domain (RESULTS.md section 11).

    .venv/bin/python benchmarks/classifier/experiments_learn.py [--seeds 5] [--only DOMAIN]

For each domain of ../shared/data/routing (a whole file, an LLMRouter task, or LLMRouter's tasks mixed):
1. the prior is the default model's recipe (``classifiers.train``: IRT difficulty, ridge, domain-balanced)
   fitted on the training pool *without that domain* and without copies of its questions, so the
   prior has never seen the traffic it is evaluated on (a new deployment's situation);
2. n rows of the domain are drawn (seeds 0..S-1) and given to ``classifiers.learn.learn`` exactly as
   ``tiergate learn`` does (its own CV, its own choice of penalty / square term / prior only);
3. the learned model, the prior and prompt length are evaluated on the remaining rows of the domain.
n = 200 and 800 where the domain has at least n + 200 rows; 100 for the 200-row tasks.
AlpacaEval is never used (evaluation-only data); NQ and TriviaQA have strong <= weak on average, so
``learn`` refuses them (reported). Single-threaded; ~5 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments_broad import load_all

from classifiers import cv, dataset, export, learn, metrics
from classifiers.features import request_words
from classifiers.scorer import ComplexityScorer
from classifiers.train import fit as default_fit


def domains(data: dataset.OutcomeData) -> dict[str, np.ndarray]:
    out = {"mmlu": data.collections == "mmlu", "mmlu_pro": data.collections == "mmlu_pro",
           "math_l5": data.collections == "math_l5",
           "llmrouter (8 training tasks mixed)": (data.collections == "llmrouter")
           & ~np.isin(data.sources, list(dataset.TRAINING_EXCLUDED_SOURCES))}
    for source in sorted(set(data.sources.tolist())):
        if source.startswith("llmrouter-"):
            out[source] = data.sources == source
    return out


def held_out_prior(data: dataset.OutcomeData, X: np.ndarray, pool: np.ndarray, dom: np.ndarray, path: Path) -> None:
    """The default recipe fitted on the pool minus the domain and minus copies of its questions."""
    train = cv.train_mask(dom, data.ids, data.duplicates) & pool
    export.linear_model(default_fit(data.subset(train), X[train]), path,
                        {"kind": "default (experiment: domain held out)"})


def short(config: learn.Config) -> str:
    """f<alpha features>[/w<alpha words>][+sq], or "prior"."""
    if config == learn.PRIOR_ONLY:
        return "prior"
    alpha_f, alpha_w, square = config
    return f"f{alpha_f:g}" + ("" if np.isinf(alpha_w) else f"/w{alpha_w:g}") + ("+sq" if square else "")


def with_words(X: np.ndarray, words: list[set[str]], vocabulary: dict[str, int] | None) -> np.ndarray:
    """A learned model's input: the hand features and its word block (same values as ``featurize``)."""
    if not vocabulary:
        return X
    W = np.zeros((len(X), len(vocabulary)))
    for i, present in enumerate(words):
        for w in present:
            j = vocabulary.get(w)
            if j is not None:
                W[i, j] = 1.0
    return np.hstack([X, W])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    np.seterr(all="ignore")
    data, X, length = load_all()
    X = X.astype(np.float64)
    words = [set(request_words(m)) for m in data.messages]
    pool = ~np.isin(data.sources, list(dataset.TRAINING_EXCLUDED_SOURCES))
    tmp = Path(tempfile.mkdtemp(prefix="tiergate-learn-"))
    print("| domain | n learned | rest | learned APGR (mean +- sd over seeds) | prior APGR | length APGR "
          "| seeds learned < prior | configs chosen |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, dom in domains(data).items():
        if args.only and args.only != name:
            continue
        prior_path = tmp / "prior.onnx"
        held_out_prior(data, X, pool, dom, prior_path)
        prior_scorer = ComplexityScorer.load(prior_path)
        idx = np.nonzero(dom)[0]
        sizes = [n for n in (200, 800) if len(idx) >= n + 200] or [100]
        for n in sizes:
            got, base_prior, base_len, configs, errors = [], [], [], [], []
            for seed in range(args.seeds):
                rng = np.random.default_rng(1000 + seed)
                pick = np.zeros(len(idx), dtype=bool)
                pick[rng.choice(len(idx), n, replace=False)] = True
                rows, rest = idx[pick], idx[~pick]
                sample = learn.Outcomes([data.ids[i] for i in rows], [data.messages[i] for i in rows],
                                        data.weak[rows], data.strong[rows])
                w, s = data.weak[rest], data.strong[rest]
                try:
                    res = learn.learn(sample, tmp / "learned.onnx", prior_path=prior_path, seed=seed)
                except learn.LearnError as exc:
                    errors.append(str(exc))
                    continue
                scorer = ComplexityScorer.load(res.path)
                learned = scorer.logits(with_words(X[rest], [words[i] for i in rest], scorer.vocabulary))
                got.append(metrics.evaluate(learned, w, s).apgr)
                base_prior.append(metrics.evaluate(prior_scorer.logits(X[rest]), w, s).apgr)
                base_len.append(metrics.evaluate(length[rest], w, s).apgr)
                configs.append(short(res.config))
            if not got:
                print(f"| {name} | {n} | {len(idx) - n} | learn refused: {errors[0]} | | | | |", flush=True)
                continue
            worse = sum(g < p - 1e-3 for g, p in zip(got, base_prior))  # float32 export can reorder near-ties
            print(f"| {name} | {n} | {len(idx) - n} | {np.mean(got):.3f} +- {np.std(got):.3f} | "
                  f"{np.mean(base_prior):.3f} | {np.mean(base_len):.3f} | {worse}/{len(got)} | "
                  f"{', '.join(configs)} |", flush=True)


if __name__ == "__main__":
    main()
