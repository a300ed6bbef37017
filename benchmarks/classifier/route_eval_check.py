"""Cross-check with the reference evaluator, and the shipped model on AlpacaEval (evaluation only).

    .venv/bin/python benchmarks/classifier/route_eval_check.py [--out-dir DIR]

1. Recomputes the shipped configuration's pooled out-of-fold scores on MMLU (subject-grouped CV,
   as ``tiergate train`` does), writes them as a SCORES.jsonl, and runs
   ``shared/tools/route_eval.py`` on them: its APGR/CPT must equal what ``tiergate train`` prints.
2. Scores AlpacaEval 2.0 prompts (CC BY-NC, read from ../shared, never trained on) with the
   shipped model through the ``tiergate score`` contract and evaluates them with route_eval.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.cli import cmd_score  # noqa: E402
from classifiers.features import featurize_many  # noqa: E402

SHARED = REPO.parent / "shared"
ROUTE_EVAL = SHARED / "tools" / "route_eval.py"
ALPACA = SHARED / "data" / "routing" / "alpaca_eval.jsonl"
MMLU = REPO / "classifiers" / "data" / "mmlu_dev.jsonl"


def route_eval(data: Path, scores: Path) -> str:
    res = subprocess.run([sys.executable, str(ROUTE_EVAL), str(data), str(scores)], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=None, help="keep the SCORES.jsonl files here")
    args = ap.parse_args()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="tiergate-route-eval-"))
    out.mkdir(parents=True, exist_ok=True)

    d = dataset.load(MMLU, for_training=True)
    X = featurize_many(d.messages)
    oof = cv.out_of_fold(
        lambda tr, te: model.decision(model.fit(X[tr], d.weak[tr], d.strong[tr], d.groups[tr]), X[te]), d.groups
    )
    oof_path = out / "mmlu_oof_scores.jsonl"
    oof_path.write_text("".join(json.dumps({"id": i, "score": float(v)}) + "\n" for i, v in zip(d.ids, oof)))
    ours = metrics.evaluate(oof, d.weak, d.strong)
    print(f"classifiers.metrics on MMLU OOF: APGR={ours.apgr:.3f} CPT50={100 * ours.cpt50:.1f}% CPT80={100 * ours.cpt80:.1f}%")
    if ROUTE_EVAL.exists():
        print("route_eval.py on MMLU OOF:\n" + route_eval(MMLU, oof_path))

    if ALPACA.exists():
        alpaca_scores = out / "alpaca_scores.jsonl"
        cmd_score(argparse.Namespace(inp=str(ALPACA), out=str(alpaca_scores), model=None))
        print("route_eval.py on AlpacaEval (shipped model, never trained on it):\n" + route_eval(ALPACA, alpaca_scores))
        a = dataset.load(ALPACA)
        oracle = metrics.evaluate(a.strong - a.weak, a.weak, a.strong)
        print(f"AlpacaEval oracle APGR {oracle.apgr:.3f} (random 0.5)")
    print(f"scores in {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
