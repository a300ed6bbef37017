"""Complexity classifier: scorer robustness and determinism, CLI contracts, calibration, training."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifiers import calibrate, features
from classifiers.cli import add_commands
from classifiers.dataset import read_jsonl
from classifiers.scorer import ComplexityScorer

REPO = Path(__file__).resolve().parents[1]
MMLU = REPO / "classifiers" / "data" / "mmlu_dev.jsonl"

QUESTION = [{"role": "user",
             "content": "Find the degree of Q(sqrt(2), sqrt(3)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"}]

ODD_INPUTS = [
    [],
    None,
    "not a list",
    [None, 3, "x"],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": 12345}],
    [{"role": "user", "content": {"text": "dict content"}}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": None}, "loose string", 7]}],
    [{"role": "wizard", "content": "unknown role"}],
    [{"role": 5, "content": "non-string role"}],
    [{"role": "assistant", "content": None, "tool_calls": 5}],
    [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}, None]},
     {"role": "tool", "tool_call_id": "1", "content": "result"}],
    [{"role": "user", "content": "x" * 1_000_000}],
    [{"role": "user", "content": "\u0000\ud800 broken surrogate and nul"}],
    [{"role": "system", "content": "only a system prompt"}],
]


@pytest.fixture(scope="module")
def scorer() -> ComplexityScorer:
    return ComplexityScorer.load()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_feature_vector_matches_names() -> None:
    assert features.featurize(QUESTION).shape == (features.N_FEATURES,)
    assert len(set(features.FEATURE_NAMES)) == features.N_FEATURES


def test_option_block_is_parsed() -> None:
    vec = dict(zip(features.FEATURE_NAMES, features.featurize(QUESTION)))
    assert vec["has_options"] == 1.0
    assert vec["log_options"] == pytest.approx(math.log1p(4))
    assert vec["opt_numeric_frac"] == 1.0
    prose = dict(zip(features.FEATURE_NAMES, features.featurize([{"role": "user", "content": "Write a haiku."}])))
    assert all(prose[name] == 0.0 for name in ("has_options", "log_options", "opt_dup_words", "neg_stem"))
    assert prose["ask_produce"] == 1.0


# A ~3k-token system prompt of numbered policies, as in a support deployment.
POLICIES = "\n".join(
    f"Policy {i}: Employees must submit expense reports within {i + 3} days of purchase, attach receipts, and "
    f"obtain manager approval for amounts over ${(i + 1) * 50}. Exceptions require written sign-off from finance."
    for i in range(1, 80)
)


def _demo_tier(score: float) -> int:
    """Index of the tier the demo's research team routes a score to (0 small, 1 mid, 2 frontier)."""
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    thresholds = demo["teams"]["research"]["routing"]["thresholds"]
    return sum(score >= thresholds[tier] for tier in ("mid", "frontier"))


def test_trivia_in_a_short_question_does_not_flip_the_tier(scorer: ComplexityScorer) -> None:
    """Issue 12: "What is policy 7?" went to small and "What is policy 42?" to mid behind the same system prompt,
    so the two also missed each other's provider cache. Numbers count as numbers, densities are smoothed."""
    questions = [f"What is policy {n}?" for n in (7, 42, 100, 2024, 31337)]
    scores = [scorer.score([{"role": "system", "content": POLICIES}, {"role": "user", "content": q}])
              for q in questions]
    assert max(scores) - min(scores) < 0.003, scores
    assert len({_demo_tier(s) for s in scores}) == 1, scores


def test_system_prompt_does_not_change_the_default_score(scorer: ComplexityScorer) -> None:
    """The shipped model never saw a system prompt or a multi-turn chat, so those features keep weight zero."""
    question = [{"role": "user", "content": "What is policy 7?"}]
    with_context = [{"role": "system", "content": POLICIES}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"}, *question]
    assert scorer.score(with_context) == pytest.approx(scorer.score(question), abs=1e-6)


def test_request_is_last_user_turn_and_context_is_counted() -> None:
    msgs = [{"role": "system", "content": "S" * 100}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"}, {"role": "user", "content": "second question"}]
    request, turns, context, tools = features.split_request(msgs)
    assert (request, turns, context, tools) == ("second question", 4, 100 + 5 + 5, False)


def test_long_prompt_is_truncated_head_and_tail() -> None:
    text = "H" * 10_000 + "T" * 10_000
    cut = features.truncate(text)
    assert len(cut) == features.HEAD_CHARS + features.TAIL_CHARS + 1
    assert cut.startswith("H") and cut.endswith("T")


@pytest.mark.parametrize("messages", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
def test_odd_inputs_score_in_unit_interval(scorer: ComplexityScorer, messages) -> None:
    value = scorer.score(messages)
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_score_is_deterministic_and_batch_matches_single(scorer: ComplexityScorer) -> None:
    rows = [r["messages"] for r in read_jsonl(MMLU)[:50]]
    single = [scorer.score(m) for m in rows]
    assert single == [scorer.score(m) for m in rows]
    assert np.allclose(scorer.score_many(rows), single, atol=1e-6)
    assert len(set(single)) > 10  # the model actually discriminates


def test_model_id_is_file_hash_prefix(scorer: ComplexityScorer) -> None:
    import hashlib

    data = (REPO / "classifiers" / "models" / "complexity.onnx").read_bytes()
    assert scorer.model_id == hashlib.sha256(data).hexdigest()[:12]


def test_score_cli_contract(tmp_path: Path, scorer: ComplexityScorer) -> None:
    lines = [
        json.dumps({"id": "a", "messages": QUESTION, "extra": 1}),
        "this is not json",
        json.dumps({"id": 7, "messages": "bad"}),
        "",
        json.dumps({"id": "c", "messages": [{"role": "user", "content": "hello"}]}),
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n")
    assert _cli(["score", "--in", str(src), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", None, 7, "c"]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert rows[0]["score"] == pytest.approx(scorer.score(QUESTION), abs=1e-6)


def test_threshold_for_share_on_hand_made_scores() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert calibrate.threshold_for_share(scores, 0.3) == pytest.approx(0.7)
    assert calibrate.strong_share(scores, calibrate.threshold_for_share(scores, 0.3)) == pytest.approx(0.3)
    assert calibrate.strong_share(scores, calibrate.threshold_for_share(scores, 0.0)) == 0.0


def test_threshold_for_quality_on_hand_made_data() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    weak = np.array([0.0, 0.0, 1.0, 1.0])
    strong = np.array([1.0, 1.0, 1.0, 1.0])
    # 0.75 x strong mean needs one of the two weak failures fixed: the top-scored one.
    assert calibrate.threshold_for_quality(scores, weak, strong, 0.75) == pytest.approx(0.9)
    assert calibrate.threshold_for_quality(scores, weak, strong, 1.0) == pytest.approx(0.8)
    assert calibrate.threshold_for_quality(scores, weak, strong, 0.5) > 0.9  # weak alone suffices


def test_calibrate_cli_prints_policy_yaml(tmp_path: Path, scorer: ComplexityScorer, capsys) -> None:
    prompts = [f"Question {i}: " + "why " * (i * 7) for i in range(10)]
    rows = [{"id": str(i), "messages": [{"role": "user", "content": p}], "weak_score": 0.0, "strong_score": 1.0}
            for i, p in enumerate(prompts)]
    data = tmp_path / "cal.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = sorted((scorer.score(r["messages"]) for r in rows), reverse=True)

    assert _cli(["calibrate", "--data", str(data), "--target-strong-share", "0.3", "--tier", "frontier"]) == 0
    policy = yaml.safe_load(capsys.readouterr().out)
    threshold = policy["routing"]["thresholds"]["frontier"]
    assert threshold == pytest.approx(scores[2], abs=1e-6)
    assert sum(s >= threshold for s in scores) == 3

    assert _cli(["calibrate", "--data", str(data), "--target-quality", "0.5", "--tier", "premium"]) == 0
    policy = yaml.safe_load(capsys.readouterr().out)
    assert sum(s >= policy["routing"]["thresholds"]["premium"] for s in scores) == 5
