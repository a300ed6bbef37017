"""How often the promotion gate promotes a candidate that is worse on the traffic that follows, with and without its
paired bootstrap, measured on one routing-outcome file without the proxy.

Why offline: in a replay run, which requests get judged depends on unseeded shadow sampling, and a file yields one or
two promotions, so two runs cannot tell the margin-only gate from the bootstrap gate. Here each trial draws ``judged``
rows of the file at random as the team's judged rows (in that order: the newest 25% are the gate's held-out rows),
runs ``classifiers.promotion.judge`` against the default prior once (its metrics hold both the observed difference,
which is what the margin-only gate decides on, and the bootstrap interval), and scores the candidate and the prior
on every row not drawn (the traffic that follows, recorded grades). The judged rows are features-only, as the
outcome store keeps them by default (``store_prompts: false``; a fit without the word block takes ~0.3 s instead of
~15 s). Same seed -> same table.

    .venv/bin/python benchmarks/replay/gate_trials.py --file math_l5 --judged 200 --trials 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import rows_of  # noqa: E402

from classifiers.features import FEATURE_NAMES, featurize  # noqa: E402
from classifiers.learn import read_outcomes  # noqa: E402
from classifiers.metrics import evaluate  # noqa: E402
from classifiers.promotion import judge  # noqa: E402
from classifiers.scorer import DEFAULT_MODEL, ComplexityScorer  # noqa: E402


def trials(name: str, judged: int, count: int, seed: int, margin: float, min_holdout: int, confidence: float,
           prior_path: Path = DEFAULT_MODEL) -> dict[str, Any]:
    rows = rows_of(name, 10**9, 0)
    messages = [r["messages"] for r in rows]
    weak = np.array([r["weak_score"] for r in rows])
    strong = np.array([r["strong_score"] for r in rows])
    prior_bytes = prior_path.read_bytes()  # read once: the serving model and the prior learn builds on
    prior = ComplexityScorer(prior_bytes)
    X = np.array([featurize(m) for m in messages])  # the hand features, once: a features-only model's inputs
    prior_scores = prior.logits(X)
    stored = [{"id": r["id"], "messages": None, "weak_score": r["weak_score"], "strong_score": r["strong_score"],
               "meta": {"features": [float(v) for v in x], "feature_names": list(FEATURE_NAMES)}}
              for r, x in zip(rows, X)]
    rng = np.random.default_rng(seed)
    out = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for t in range(count):
            order = rng.permutation(len(rows))
            drawn, rest = order[:judged], order[judged:]
            path = Path(tmp) / "judged.jsonl"
            path.write_text("".join(json.dumps(stored[i]) + "\n" for i in drawn))
            verdict = judge(read_outcomes(path), prior_bytes, seed=t, margin=margin, min_holdout=min_holdout,
                            prior_path=prior_path, confidence=confidence)
            boot = verdict.metrics["bootstrap"]
            candidate = ComplexityScorer(verdict.model).logits(X[rest])
            later = (evaluate(candidate, weak[rest], strong[rest]).apgr
                     - evaluate(prior_scores[rest], weak[rest], strong[rest]).apgr)
            held = verdict.metrics["holdout_apgr"]
            margin_only = verdict.metrics["n_holdout"] >= min_holdout and held["candidate"] >= held["current"] + margin
            out.append({"trial": t, "held_out_difference": boot["difference"], "interval": boot["interval"],
                        "margin_only_promotes": bool(margin_only), "bootstrap_promotes": verdict.promote,
                        "later_difference": round(float(later), 6)})
    return {"file": name, "judged": judged, "n_holdout": verdict.metrics["n_holdout"], "later_rows": len(rows) - judged,
            "trials": out, "margin": margin, "confidence": confidence, "seed": seed, "prior_model_id": prior.model_id,
            "wall_s": round(time.monotonic() - started, 1)}


def summary(run: dict[str, Any]) -> str:
    lines = [f"{run['file']}: {len(run['trials'])} trials, {run['judged']} judged rows ({run['n_holdout']} held out), "
             f"{run['later_rows']} later rows, margin {run['margin']}, confidence {run['confidence']}, prior "
             f"{run['prior_model_id']} "
             f"({run['wall_s']} s)"]
    for gate in ("margin_only", "bootstrap"):
        promoted = [t for t in run["trials"] if t[f"{gate}_promotes"]]
        worse = [t for t in promoted if t["later_difference"] < 0]
        gained = float(np.mean([t["later_difference"] for t in promoted])) if promoted else float("nan")
        lines.append(f"  {gate:11s}: promoted {len(promoted):2d}, of which worse than the prior later {len(worse):2d}; "
                     f"mean later APGR difference of its promotions {gained:+.4f}")
    better = sum(t["later_difference"] > 0 for t in run["trials"])
    lines.append(f"  candidates better than the prior on the later rows: {better} of {len(run['trials'])}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", required=True)
    p.add_argument("--judged", type=int, default=200, help="judged rows per trial (the newest 25%% are held out)")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--min-holdout", type=int, default=50)
    p.add_argument("--confidence", type=float, default=0.8)
    p.add_argument("--prior", type=Path, default=DEFAULT_MODEL,
                   help="the default model (pin one: another session may rewrite classifiers/models/complexity.onnx)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    run = trials(args.file, args.judged, args.trials, args.seed, args.margin, args.min_holdout, args.confidence,
                 args.prior)
    if args.out:
        args.out.write_text(json.dumps(run, indent=1) + "\n")
    print(summary(run))


if __name__ == "__main__":
    main()
