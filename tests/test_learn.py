"""``tiergate learn`` / ``tiergate score --model``: the contracts outside evaluation uses.

Learning on a deployment's judged rows must pick up structure the prior does not know, write the same
bytes for the same rows and seed, load wherever a model loads (CLI, proxy scorer setting), and turn
every kind of bad input into a one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from classifiers.cli import add_commands
from classifiers.scorer import ComplexityScorer
from router.scoring import load_scorer


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _ask(i: int, topic: str) -> str:
    return f"Question {i}: what should I know about my {topic} this week?"


HARD, EASY = "pension", "holiday"  # same length: only the word block can tell them apart


def _rows(n: int = 240) -> list[dict]:
    """Traffic where the strong tier helps on questions about one topic and rarely on another, asked
    in the same words otherwise: structure the prior (no topic features, by design) cannot see."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        hard = i % 2 == 0
        strong_wins = rng.random() < (0.8 if hard else 0.15)
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": _ask(i, HARD if hard else EASY)}],
                     "weak_score": 0.0 if strong_wins else 1.0, "strong_score": 1.0})
    return rows


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> tuple[Path, Path, str]:
    """(outcome rows, learned model, what ``tiergate learn`` printed)."""
    d = tmp_path_factory.mktemp("learn")
    rows = _write(d / "outcomes.jsonl", _rows())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _cli(["learn", "--outcomes", str(rows), "--out", str(d / "team.onnx"), "--seed", "3"]) == 0
    return rows, d / "team.onnx", printed.getvalue()


def test_learn_picks_up_traffic_structure_and_reports_cv(learned) -> None:
    _, out, printed = learned
    apgr = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith("| score")}
    learned_apgr = next(v for k, v in apgr.items() if k.startswith("learned model"))
    assert learned_apgr > apgr["prior"] + 0.1, printed
    assert "prompt length (tokens)" in apgr
    scorer = ComplexityScorer.load(out)
    hard = np.mean([scorer.score([{"role": "user", "content": _ask(i, HARD)}]) for i in range(1000, 1020)])
    easy = np.mean([scorer.score([{"role": "user", "content": _ask(i, EASY)}]) for i in range(1000, 1020)])
    assert hard > easy + 0.2
    assert HARD in scorer.metadata["vocabulary"].split()
    assert scorer.metadata["kind"] == "learned"
    assert scorer.metadata["prior_model_id"] == ComplexityScorer.load().model_id


def test_learn_is_deterministic(learned, tmp_path: Path) -> None:
    rows, out, _ = learned
    again = tmp_path / "again.onnx"
    assert _cli(["learn", "--outcomes", str(rows), "--out", str(again), "--seed", "3"]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_score_with_learned_model_and_proxy_loads_it(learned, tmp_path: Path) -> None:
    rows, out, _ = learned
    scores = tmp_path / "scores.jsonl"
    assert _cli(["score", "--model", str(out), "--in", str(rows), "--out", str(scores)]) == 0
    got = [json.loads(line) for line in scores.read_text().splitlines()]
    expected = ComplexityScorer.load(out)
    first = json.loads(rows.read_text().splitlines()[0])
    assert got[0]["id"] == first["id"]
    assert got[0]["score"] == pytest.approx(expected.score(first["messages"]), abs=1e-6)
    proxy_scorer = load_scorer(str(out))
    assert proxy_scorer.model_id == expected.model_id
    assert proxy_scorer.score(first["messages"]) == pytest.approx(got[0]["score"], abs=1e-6)


GOOD = _rows()
BAD_INPUTS = {
    "missing file": None,
    "bad JSON": GOOD[:100] + ["{not json"],
    "too few rows": GOOD[:20],
    "a row without two grades": GOOD[:100] + [{"id": "x", "messages": [{"role": "user", "content": "hi"}],
                                              "weak_score": 0.0}],
    "a grade that is not a number": GOOD[:100] + [{"id": "y", "messages": [], "weak_score": "high",
                                                  "strong_score": 1.0}],
    "one class only": [dict(r, weak_score=1.0, strong_score=1.0) for r in GOOD],
    "strong never better on average": [dict(r, weak_score=1.0, strong_score=0.0 if i % 3 else 1.0)
                                       for i, r in enumerate(GOOD)],
    "not an object": GOOD[:100] + ["[1, 2, 3]"],
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_learn_bad_input_is_one_line_exit_2(case: str, tmp_path: Path, capsys) -> None:
    rows = tmp_path / "rows.jsonl"
    if BAD_INPUTS[case] is not None:
        _write(rows, BAD_INPUTS[case])
    out = tmp_path / "m.onnx"
    assert _cli(["learn", "--outcomes", str(rows), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tiergate learn: ") and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_score_with_missing_or_broken_model_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    requests = _write(tmp_path / "in.jsonl", GOOD[:3])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    for model in (tmp_path / "missing.onnx", broken):
        assert _cli(["score", "--model", str(model), "--in", str(requests), "--out", str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("tiergate score: cannot load model") and "\n" not in err
