"""``tiergate learn`` on features-only rows: what the outcome store keeps for a team that stores no prompts.

The rows carry the hand-feature vector (``meta.features`` + ``meta.feature_names``) instead of ``messages``; the
learned model must use it as it would the computed features (same structure found, same bytes for the same rows
and seed), score real requests through its ONNX graph, accept a file mixing both kinds, and turn a vector from
another feature set into a one-line error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from classifiers.cli import add_commands
from classifiers.features import FEATURE_NAMES, featurize
from classifiers.learn import learn, read_outcomes
from classifiers.scorer import ComplexityScorer


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _messages(i: int) -> list[dict]:
    words = " ".join(f"detail{j} of item {i}" for j in range(1 + (i * 7) % 60))
    return [{"role": "user", "content": f"Please summarise: {words}"}]


def _rows(n: int = 300) -> list[dict]:
    """Planted structure the prior gets backwards: the strong tier helps on SHORT requests, not on long ones."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        m = _messages(i)
        short = (i * 7) % 60 < 30
        wins = rng.random() < (0.85 if short else 0.1)
        rows.append({"id": f"f{i}", "messages": m, "weak_score": 0.0 if wins else 1.0, "strong_score": 1.0})
    return rows


def _features_only(row: dict, reverse: bool = False) -> dict:
    names = list(FEATURE_NAMES)
    values = [float(v) for v in featurize(row["messages"])]
    if reverse:  # order by name is the contract, not position
        names, values = names[::-1], values[::-1]
    return {"id": row["id"], "messages": None, "weak_score": row["weak_score"], "strong_score": row["strong_score"],
            "meta": {"team": "t", "features": values, "feature_names": names, "prior_score": 0.0}}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_features_only_rows_learn_the_planted_structure_deterministically(tmp_path: Path) -> None:
    rows = [_features_only(r, reverse=i % 2 == 1) for i, r in enumerate(_rows())]
    data = read_outcomes(_write(tmp_path / "f.jsonl", rows))
    assert data.features_only and all(m is None for m in data.messages)
    first = learn(data, tmp_path / "a.onnx", seed=1)
    learn(read_outcomes(tmp_path / "f.jsonl"), tmp_path / "b.onnx", seed=1)  # the same rows read again
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert first.vocabulary_size == 0
    assert first.cv_model.apgr > first.prior.apgr + 0.1, (first.cv_model, first.prior)
    # The exported graph scores real requests: short ones (where the strong tier wins) above long ones.
    scorer = ComplexityScorer((tmp_path / "a.onnx").read_bytes())
    assert scorer.vocabulary is None
    scores = scorer.score_many([r["messages"] for r in _rows()])
    short = np.array([(i * 7) % 60 < 30 for i in range(len(scores))])
    assert np.mean(np.array(scores)[short]) > np.mean(np.array(scores)[~short])


def test_same_rows_with_or_without_text_give_the_same_features(tmp_path: Path) -> None:
    """Features-only vs text rows: the same hand features, so the same prior, length ranking and chosen config."""
    text = _rows()
    only = learn(read_outcomes(_write(tmp_path / "f.jsonl", [_features_only(r) for r in text])), tmp_path / "f.onnx")
    mixed = learn(read_outcomes(_write(tmp_path / "m.jsonl", [_features_only(r) if i % 3 else r
                                                               for i, r in enumerate(text)])), tmp_path / "m.onnx")
    assert mixed.vocabulary_size == 0  # a mixed file trains without the word block
    assert only.prior.apgr == pytest.approx(mixed.prior.apgr, abs=1e-6)
    assert (tmp_path / "f.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()


def test_features_from_another_feature_set_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    row = _features_only(_rows(1)[0])
    row["meta"]["feature_names"][0] = "not_a_feature"
    bad = _write(tmp_path / "bad.jsonl", [row])
    assert _cli(["learn", "--outcomes", str(bad), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:1" in err and "feature set" in err
    nothing = _write(tmp_path / "none.jsonl", [{"id": 1, "messages": None, "weak_score": 0, "strong_score": 1}])
    assert _cli(["learn", "--outcomes", str(nothing), "--out", str(tmp_path / "y.onnx")]) == 2
    assert "meta.features" in capsys.readouterr().err
