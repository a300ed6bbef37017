"""Cross-check with the reference evaluator, and the shipped model on evaluation-only data.

    .venv/bin/python benchmarks/classifier/route_eval_check.py [--out-dir DIR]

1. Recomputes the default recipe's domain-grouped out-of-fold scores on ``classifiers/data`` (as
   ``tiergate train`` does), writes them as a SCORES.jsonl, and runs ``shared/tools/route_eval.py`` on
   each training file: its APGR/CPT must equal what ``tiergate train`` prints per collection.
2. Scores the evaluation-only rows of ../shared/data/routing (AlpacaEval, LLMRouter NQ/ARC/GPQA; never
   trained on) with the shipped model through the ``tiergate score`` contract and evaluates them with
   route_eval.py.
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

from classifiers import dataset, metrics
from classifiers.cli import cmd_score
from classifiers.features import featurize_many
from classifiers.train import out_of_fold

SHARED = REPO.parent / "shared"
ROUTE_EVAL = SHARED / "tools" / "route_eval.py"
DATA = REPO / "classifiers" / "data"


def route_eval(data: Path, scores: Path) -> str:
    res = subprocess.run([sys.executable, str(ROUTE_EVAL), str(data), str(scores)], capture_output=True, text=True,
                         check=True)
    return res.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=None, help="keep the SCORES.jsonl files here")
    args = ap.parse_args()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="tiergate-route-eval-"))
    out.mkdir(parents=True, exist_ok=True)

    d = dataset.load(DATA, for_training=True)
    oof = out_of_fold(d, featurize_many(d.messages).astype(np.float64))
    oof_path = out / "oof_scores.jsonl"
    oof_path.write_text("".join(json.dumps({"id": i, "score": float(v)}) + "\n" for i, v in zip(d.ids, oof)))
    for f in sorted(DATA.glob("*.jsonl")):
        m = np.isin(d.ids, [r["id"] for r in dataset.read_jsonl(f)])
        ours = metrics.evaluate(oof[m], d.weak[m], d.strong[m])
        print(f"{f.name}: classifiers.metrics APGR={ours.apgr:.3f} CPT50={100 * ours.cpt50:.1f}% "
              f"CPT80={100 * ours.cpt80:.1f}%; "
              f"route_eval.py: {route_eval(f, oof_path) if ROUTE_EVAL.exists() else '-'}")

    shared = SHARED / "data" / "routing"
    if shared.exists():
        evaluation_only = [r for f in sorted(shared.glob("*.jsonl")) for r in dataset.read_jsonl(f)
                           if r.get("source") in dataset.TRAINING_EXCLUDED_SOURCES]
        for source in sorted({r["source"] for r in evaluation_only}):
            rows = out / f"{source}.jsonl"
            rows.write_text("".join(json.dumps(r) + "\n" for r in evaluation_only if r["source"] == source))
            scores = out / f"{source}_scores.jsonl"
            cmd_score(argparse.Namespace(inp=str(rows), out=str(scores), model=None))
            e = dataset.load(rows)
            oracle = metrics.evaluate(e.strong - e.weak, e.weak, e.strong).apgr
            print(f"{source} (evaluation only, shipped model): {route_eval(rows, scores)}; oracle APGR {oracle:.3f}")
    print(f"scores in {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
