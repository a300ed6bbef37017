"""The judge's verdict parsing and grades (pure logic), and the simulator's judge mode answering that prompt."""

from __future__ import annotations

import random

import pytest

from pipeline.judge import Pairing, judge_messages, parse_verdict
from simulator.judge import judge_reply


@pytest.mark.parametrize(("text", "verdict"), [
    ("VERDICT: A", "A"), ("verdict: b", "B"), ("**Verdict:** TIE", "TIE"), ("Verdict A... no, VERDICT: B", "B"),
    ('{"winner": "a"}', "A"), ("B", "B"), ("", None), (None, None), ("I like both", None), ("VERDICT: C", None),
])
def test_parse_verdict(text: str | None, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


def test_grades_follow_the_order_shown() -> None:
    assert Pairing(weak_first=True).grades("A") == (1.0, 0.0)
    assert Pairing(weak_first=False).grades("A") == (0.0, 1.0)
    assert Pairing(weak_first=False).grades("TIE") == (0.5, 0.5)
    draws = {Pairing.draw(random.Random(seed)).weak_first for seed in range(20)}
    assert draws == {True, False}  # the order is randomised


def test_simulated_judge_prefers_the_longer_answer_whichever_side_it_is_on() -> None:
    request = [{"role": "user", "content": "Say hi"}]
    for weak_first in (True, False):
        pairing = Pairing(weak_first)
        verdict = parse_verdict(judge_reply(judge_messages(request, "hi", "hello there", pairing)))
        assert verdict is not None and pairing.grades(verdict) == (0.0, 1.0)
    assert judge_reply(request) is None  # not a judge prompt: the simulator answers as usual
