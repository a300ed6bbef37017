"""``tiergate score | train | learn | calibrate``: registered on the main CLI's subparsers by ``add_commands``.

Bad input (a missing file, a model that does not load, rows that cannot train) ends with a one-line
error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _fail(command: str, message: str) -> int:
    print(f"tiergate {command}: {message}", file=sys.stderr)
    return 2


def _load_scorer(command: str, path: str | None) -> Any:
    """The scorer of ``path`` (None = the shipped model), or None after printing why it cannot load."""
    from classifiers.scorer import ComplexityScorer

    try:
        return ComplexityScorer.load(path)
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types; all mean "not a usable model"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(command, f"cannot load model {path or 'classifiers/models/complexity.onnx'}: {reason}")
        return None


def cmd_score(args: argparse.Namespace) -> int:
    """Score every request of a JSONL file; bad rows get the scorer's fallback score, never a crash."""
    scorer = _load_scorer("score", args.model)
    if scorer is None:
        return 2
    try:
        rows = list(_read_requests(Path(args.inp)))
    except OSError as exc:
        return _fail("score", f"cannot read {args.inp}: {exc.strerror or exc}")
    bad = sum(1 for rid, _ in rows if rid is None)
    with open(args.out, "w", encoding="utf-8") as out:
        for start in range(0, len(rows), SCORE_BATCH):
            chunk = rows[start : start + SCORE_BATCH]
            scores = scorer.score_many([m for _, m in chunk])
            out.writelines(json.dumps({"id": rid, "score": value}) + "\n" for (rid, _), value in zip(chunk, scores))
    if bad:
        print(f"tiergate score: {bad} row(s) were not JSON objects with an id; scored with id null", file=sys.stderr)
    print(f"scored {len(rows)} request(s) with model {scorer.model_id} -> {args.out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from classifiers.train import format_report, train

    try:
        result = train(args.data, args.out, seed=args.seed)
    except ValueError as exc:  # no rows, or rows without both grades
        return _fail("train", str(exc).splitlines()[0])
    except (KeyError, TypeError) as exc:
        return _fail("train", f"a row in {args.data} lacks a field or has a wrong type ({exc})")
    except (OSError, json.JSONDecodeError) as exc:
        return _fail("train", f"cannot read {args.data}: {str(exc).splitlines()[0]}")
    print(format_report(result.report))
    print(f"\nwrote {result.model_path} ({result.size_bytes} bytes), {result.card_json}, {result.card_md}")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from classifiers.learn import LearnError, format_result, learn, read_outcomes

    if args.outcomes is None or args.out is None:
        return _fail("learn", "--outcomes and --out are required")
    try:
        result = learn(read_outcomes(args.outcomes), args.out, prior_path=args.prior, seed=args.seed)
    except LearnError as exc:
        return _fail("learn", str(exc))
    except OSError as exc:
        return _fail("learn", f"cannot write {args.out}: {exc.strerror or exc}")
    print(format_result(result))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from classifiers import calibrate, dataset

    if args.data is None:
        return _fail("calibrate", "--data is required")
    path = Path(args.data)
    try:
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        rows = [row for f in files for row in dataset.read_jsonl(f)]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return _fail("calibrate", f"cannot read {args.data}: {str(exc).splitlines()[0]}")
    if not rows:
        return _fail("calibrate", f"no rows in {args.data}")
    scorer = _load_scorer("calibrate", args.model)
    if scorer is None:
        return 2
    scores = np.array(scorer.score_many([r.get("messages") if isinstance(r, dict) else None for r in rows]))
    if args.target_strong_share is not None:
        threshold = calibrate.threshold_for_share(scores, args.target_strong_share)
        how = f"target strong share {args.target_strong_share}"
        quality_note = ""
    else:
        try:
            data = dataset.from_rows(rows)
        except (KeyError, TypeError, ValueError):
            print("tiergate calibrate: --target-quality needs weak_score and strong_score on every row",
                  file=sys.stderr)
            return 2
        threshold = calibrate.threshold_for_quality(scores, data.weak, data.strong, args.target_quality)
        q = calibrate.routed_quality(scores, data.weak, data.strong, threshold)
        how = f"target quality {args.target_quality} x strong mean {data.strong.mean():.4f}"
        quality_note = f", routed quality {q:.4f}"
    share = calibrate.strong_share(scores, threshold)
    print(f"# {how}: {100 * share:.1f}% of {len(rows)} requests reach the threshold{quality_note}")
    print(calibrate.policy_yaml(args.tier, threshold), end="")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``score``, ``train``, ``learn`` and ``calibrate`` on the main CLI's subparsers."""
    p = subparsers.add_parser("score", help="score requests in a JSONL file with the complexity model")
    p.add_argument("--in", dest="inp", required=True, help='JSONL rows {"id": ..., "messages": [...]}')
    p.add_argument("--out", required=True, help='JSONL rows {"id": ..., "score": float}, same order')
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped complexity.onnx)")
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("train", help="train the default complexity model with domain-grouped CV")
    p.add_argument("--data", required=True, help="directory of routing-outcome *.jsonl (see classifiers/data)")
    p.add_argument("--out", required=True, help="output .onnx path; the model card is written next to it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("learn", help="fit a deployment model from judged outcomes on top of the default prior")
    p.add_argument("--outcomes", default=None,
                   help="JSONL rows with id, messages (or meta.features), weak_score (the cheaper tier's grade) and "
                        "strong_score; required unless --team (where it is the fallback when the ledger has none)")
    p.add_argument("--out", default=None, help="output .onnx path (load it with `tiergate score --model` "
                                                "or `classifier.model:` in the policy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CV folds; same rows and seed -> same bytes")
    p.add_argument("--prior", default=None, help="model to build on (default: the shipped complexity.onnx)")
    p.set_defaults(func=cmd_learn)

    p = subparsers.add_parser("calibrate", help="print the routing threshold that reaches a target")
    p.add_argument("--data", default=None,
                   help="JSONL of requests, or a directory of them (with weak_score/strong_score for --target-quality)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-strong-share", type=float, help="fraction of requests to send to the tier")
    target.add_argument("--target-quality", type=float, help="fraction of the strong model's mean quality to keep")
    p.add_argument("--tier", default="frontier", help="tier name the threshold is for")
    p.add_argument("--model", default=None, help="ONNX model (default: the shipped complexity.onnx)")
    p.set_defaults(func=cmd_calibrate)
