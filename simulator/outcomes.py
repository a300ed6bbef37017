"""Outcome replay: a simulated deployment whose ``simulator:`` options name a routing-outcome file
(``outcomes: FILE.jsonl``, the format of ``../shared/data/routing/``) answers each prompt of that file with the
grade recorded for one side of the pair (``outcomes_grade: weak`` for the cheaper tiers, ``strong`` for the
frontier).

Why: the replay harness (``benchmarks/replay``) drives the proxy's learning loop (shadow sampling, the judge, the
outcome store, retraining, promotion) with public outcome data as traffic, so what the loop learns must be what
the data recorded. The grade is carried by the answer's length (``GRADE_STEPS`` marks at grade 1.0, none at 0.0):
the simulator's judge mode (``simulator.judge``) prefers the longer answer and calls equal lengths a tie, so it
returns the recorded comparison without knowing about the file. Prompts not in the file are answered as usual.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import orjson

from simulator.engine import Generation
from text.messages import message_text
from text.tokens import count_text

GRADE_STEPS = 40
SIDES = ("weak", "strong")


def prompt_key(messages: list[Any]) -> str:
    """The last user message's text: what the file's rows hold (one user turn) and what the proxy forwards."""
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    return hashlib.sha256(message_text(last).encode() if last is not None else b"").hexdigest()


@lru_cache(maxsize=8)
def recorded(path: str) -> dict[str, tuple[float, float]]:
    """prompt key -> (weak_score, strong_score), read once per process and file."""
    grades: dict[str, tuple[float, float]] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                row = orjson.loads(line)
                grades[prompt_key(row["messages"])] = (float(row["weak_score"]), float(row["strong_score"]))
    return grades


def graded_answer(grade: float) -> str:
    """The answer text of a grade: its length orders answers as their grades do, equal grades tie."""
    return "Recorded answer: " + "+" * round(GRADE_STEPS * min(max(grade, 0.0), 1.0))


def replay(gen: Generation, messages: list[Any], path: str, side: str) -> Generation:
    """``gen`` with its text choices replaced by the recorded grade's answer when the prompt is in the file."""
    grades = recorded(path).get(prompt_key(messages))
    if grades is None:
        return gen
    text = graded_answer(grades[SIDES.index(side)])
    tokens = count_text(text, gen.model)
    for choice in gen.choices:
        if choice.tool_call is None:
            choice.pieces, choice.finish_reason, choice.completion_tokens = [text], "stop", tokens
    completion = sum(c.completion_tokens for c in gen.choices)
    gen.usage["completion_tokens"] = completion
    gen.usage["total_tokens"] = gen.usage["prompt_tokens"] + completion
    return gen
