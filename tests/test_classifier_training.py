"""Training and the evaluator: deterministic with a seed, metrics agree with the reference evaluator."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from classifiers import metrics
from classifiers.cli import add_commands
from classifiers.dataset import TRAINING_EXCLUDED_SOURCES, read_jsonl
from classifiers.scorer import ComplexityScorer
from classifiers.train import train

REPO = Path(__file__).resolve().parents[1]
MMLU = REPO / "classifiers" / "data" / "mmlu_dev.jsonl"
ROUTE_EVAL = REPO.parent / "shared" / "tools" / "route_eval.py"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Four subjects, 60 rows each: enough for grouped CV, fast enough for a unit test."""
    rows = read_jsonl(MMLU)
    keep, seen = [], {}
    for r in rows:
        subject = r["meta"]["subject"]
        if subject in ("astronomy", "formal_logic", "nutrition", "professional_law") and seen.get(subject, 0) < 60:
            seen[subject] = seen.get(subject, 0) + 1
            keep.append(r)
    # Evaluation-only sources (licence or terms): present in the folder, never trained on.
    excluded = [{"id": f"{source}-0", "source": source, "messages": [{"role": "user", "content": "hi"}],
                 "weak_score": 0.0, "strong_score": 0.5} for source in sorted(TRAINING_EXCLUDED_SOURCES)]
    d = tmp_path_factory.mktemp("data")
    (d / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    (d / "excluded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in excluded))
    return d


def test_training_is_deterministic_with_seed(small_data: Path, tmp_path: Path) -> None:
    a = train(small_data, tmp_path / "a.onnx", seed=3, show_progress=False)
    b = train(small_data, tmp_path / "b.onnx", seed=3, show_progress=False)
    assert a.report.sources == b.report.sources
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert len(a.report.folds) == 4  # the evaluation-only rows were not trained on
    card = json.loads(a.card_json.read_text())
    assert card["data"]["rows"] == 240
    msg = [{"role": "user", "content": "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"}]
    a, b = ComplexityScorer.load(tmp_path / "a.onnx"), ComplexityScorer.load(tmp_path / "b.onnx")
    assert a.score(msg) == b.score(msg)


@pytest.mark.parametrize("case", ["missing", "empty", "only excluded rows", "bad JSON"])
def test_train_without_usable_data_is_one_line_exit_2(case: str, small_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "only excluded rows":
        (data / "excluded.jsonl").write_text((small_data / "excluded.jsonl").read_text())
    if case == "bad JSON":
        (data / "rows.jsonl").write_text("{broken\n")
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--data", str(data), "--out", str(tmp_path / "m.onnx")])
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tiergate train: ") and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_metrics_constant_score_is_random() -> None:
    rng = np.random.default_rng(0)
    weak, strong = rng.integers(0, 2, 200).astype(float), np.ones(200)
    m = metrics.evaluate(np.zeros(200), weak, strong)
    assert m.apgr == pytest.approx(0.5) and m.cpt50 == pytest.approx(0.5) and m.cpt80 == pytest.approx(0.8)


@pytest.mark.skipif(not ROUTE_EVAL.exists(), reason="reference evaluator not present")
def test_metrics_match_reference_evaluator() -> None:
    spec = importlib.util.spec_from_file_location("route_eval", ROUTE_EVAL)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    rng = np.random.default_rng(1)
    n = 500
    weak, strong = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    strong[: n // 3] = 1.0
    score = np.round(rng.random(n) + 0.3 * (strong - weak), 2)  # rounded: exercises tie groups
    rows = [{"id": str(i), "weak_score": w, "strong_score": s, "weak_model": "w", "strong_model": "s"}
            for i, (w, s) in enumerate(zip(weak, strong))]
    expected = ref.evaluate(rows, {str(i): float(v) for i, v in enumerate(score)}, ratio_override=0.0)
    got = metrics.evaluate(score, weak, strong)
    assert got.apgr == pytest.approx(expected["apgr"], abs=1e-12)
    assert 100 * got.cpt50 == pytest.approx(expected["cpt50"], abs=1e-9)
    assert 100 * got.cpt80 == pytest.approx(expected["cpt80"], abs=1e-9)
