"""``tiergate score | train | calibrate``: registered on the main CLI's subparsers by ``add_commands``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

# Rows scored per inference call: large enough to amortise the session call, small enough to stream.
SCORE_BATCH = 512


def _read_requests(path: Path) -> Iterator[tuple[Any, Any]]:
    """(id, messages) per non-blank line; a line that is not a JSON object yields (None, None)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield None, None
                continue
            yield (row.get("id"), row.get("messages")) if isinstance(row, dict) else (None, None)


def cmd_score(args: argparse.Namespace) -> int:
    """Score every request of a JSONL file; bad rows get the scorer's fallback score, never a crash."""
    from classifiers.scorer import ComplexityScorer

    scorer = ComplexityScorer.load(args.model)
    rows = list(_read_requests(Path(args.inp)))
    bad = sum(1 for rid, _ in rows if rid is None)
    with open(args.out, "w", encoding="utf-8") as out:
        for start in range(0, len(rows), SCORE_BATCH):
            chunk = rows[start : start + SCORE_BATCH]
            for (rid, _), value in zip(chunk, scorer.score_many([m for _, m in chunk])):
                out.write(json.dumps({"id": rid, "score": value}) + "\n")
    if bad:
        print(f"tiergate score: {bad} row(s) were not JSON objects with an id; scored with id null", file=sys.stderr)
    print(f"scored {len(rows)} request(s) with model {scorer.model_id} -> {args.out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from classifiers.train import format_report, train

    result = train(args.data, args.out, seed=args.seed)
    print(format_report(result.report))
    print(f"\nwrote {result.model_path} ({result.size_bytes} bytes), {result.card_json}, {result.card_md}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from classifiers import calibrate, dataset
    from classifiers.scorer import ComplexityScorer

    rows = dataset.read_jsonl(Path(args.data))
    if not rows:
        print(f"tiergate calibrate: no rows in {args.data}", file=sys.stderr)
        return 2
    scores = np.array(ComplexityScorer.load(args.model).score_many([r.get("messages") for r in rows]))
    if args.target_strong_share is not None:
        threshold = calibrate.threshold_for_share(scores, args.target_strong_share)
        how = f"target strong share {args.target_strong_share}"
        quality_note = ""
    else:
        try:
            data = dataset.from_rows(rows)
        except (KeyError, TypeError, ValueError):
            print("tiergate calibrate: --target-quality needs weak_score and strong_score on every row", file=sys.stderr)
            return 2
        threshold = calibrate.threshold_for_quality(scores, data.weak, data.strong, args.target_quality)
        q = calibrate.routed_quality(scores, data.weak, data.strong, threshold)
        how = f"target quality {args.target_quality} x strong mean {data.strong.mean():.4f}"
        quality_note = f", routed quality {q:.4f}"
    share = calibrate.strong_share(scores, threshold)
    print(f"# {how}: {100 * share:.1f}% of {len(rows)} requests reach the threshold{quality_note}")
    print(calibrate.policy_yaml(args.tier, threshold), end="")
    return 0


def add_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``score``, ``train`` and ``calibrate`` on the main CLI's subparsers."""
    p = subparsers.add_parser("score", help="score requests in a JSONL file with the complexity model")
    p.add_argument("--in", dest="inp", required=True, help='JSONL rows {"id": ..., "messages": [...]}')
    p.add_argument("--out", required=True, help='JSONL rows {"id": ..., "score": float}, same order')
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped complexity.onnx)")
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("train", help="train the complexity model with subject-grouped CV")
    p.add_argument("--data", required=True, help="directory of routing-outcome *.jsonl (see classifiers/data)")
    p.add_argument("--out", required=True, help="output .onnx path; the model card is written next to it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("calibrate", help="print the routing threshold that reaches a target")
    p.add_argument("--data", required=True, help="JSONL of requests (with weak_score/strong_score for --target-quality)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-strong-share", type=float, help="fraction of requests to send to the tier")
    target.add_argument("--target-quality", type=float, help="fraction of the strong model's mean quality to keep")
    p.add_argument("--tier", default="frontier", help="tier name the threshold is for")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped complexity.onnx)")
    p.set_defaults(func=cmd_calibrate)
