"""Outcome replay in the simulator (``simulator.outcomes``): deployments whose options name a routing-outcome file
answer its prompts with the recorded grade of their side, and the simulator's judge returns the recorded comparison.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pipeline.judge import Pairing, answer_text, judge_messages, parse_verdict
from simulator.outcomes import graded_answer
from simulator.provider import SimulatedUpstream

ROWS = [("p-up", 0.0, 1.0), ("p-down", 1.0, 0.0), ("p-tie", 1.0, 1.0), ("p-part", 0.25, 0.75)]


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "outcomes.jsonl"
    path.write_text("".join(json.dumps({"id": i, "messages": [{"role": "user", "content": f"question {i}"}],
                                        "weak_score": w, "strong_score": s}) + "\n" for i, w, s in ROWS))
    return path


def _ask(upstream: SimulatedUpstream, messages: list[dict]) -> dict:
    body = {"model": "m", "messages": messages, "max_tokens": 64}
    return asyncio.run(upstream.send("chat/completions", body)).body


def test_each_side_answers_its_recorded_grade_and_the_judge_returns_the_comparison(tmp_path: Path) -> None:
    path = str(_file(tmp_path))
    weak = SimulatedUpstream(outcomes=path, outcomes_grade="weak")
    strong = SimulatedUpstream(outcomes=path, outcomes_grade="strong")
    judge = SimulatedUpstream()
    for rid, w, s in ROWS:
        messages = [{"role": "user", "content": f"question {rid}"}]
        a, b = _ask(weak, messages), _ask(strong, messages)
        assert answer_text(a) == graded_answer(w) and answer_text(b) == graded_answer(s)
        assert a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]
        for weak_first in (True, False):
            pairing = Pairing(weak_first)
            verdict = parse_verdict(answer_text(_ask(judge, judge_messages(messages, answer_text(a) or "",
                                                                             answer_text(b) or "", pairing))))
            assert verdict is not None
            graded = pairing.grades(verdict)
            assert graded == ((0.5, 0.5) if w == s else (1.0, 0.0) if w > s else (0.0, 1.0)), (rid, weak_first)


def test_prompts_outside_the_file_are_answered_as_usual_and_bad_options_refused(tmp_path: Path) -> None:
    path = str(_file(tmp_path))
    other = [{"role": "user", "content": "something else"}]
    replaying, plain = _ask(SimulatedUpstream(outcomes=path), other), _ask(SimulatedUpstream(), other)
    assert answer_text(replaying) == answer_text(plain) and replaying["usage"] == plain["usage"]
    assert not (answer_text(plain) or "").startswith("Recorded answer")
    with pytest.raises(ValueError, match="outcomes_grade must be weak or strong"):
        SimulatedUpstream(outcomes=path, outcomes_grade="frontier")
