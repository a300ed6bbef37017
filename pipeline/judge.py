"""The judge's prompt and the parsing of its verdict: two answers to one request, graded pairwise.

Why pairwise and not a rubric score per answer: an LLM judge ranks two answers side by side far more consistently
than it places one answer on an absolute scale, and the learner needs the gap (strong - weak), which a comparison
measures directly. The order is randomised per request (position bias); grades are 1 for the preferred answer and
0 for the other, 0.5 each on a tie, so ``weak_score`` and ``strong_score`` stay in [0, 1].

The verdict line format is what ``simulator.judge`` answers in judge mode; a real model asked the same prompt
answers the same line. Parsing is tolerant (case, markdown, a JSON object) and never raises: an answer it cannot
read is ``None`` and records nothing but the judge call's usage.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Verdict = Literal["A", "B", "TIE"]

JUDGE_MARKER = "You are tiergate's answer judge."
ANSWER_A, ANSWER_B, END = "[Answer A]", "[Answer B]", "[End of answers]"
JUDGE_SYSTEM = (f"{JUDGE_MARKER} Compare two answers to the same request for correctness, helpfulness and "
                "completeness. Ignore their order and length as such. Reply with exactly one line: "
                "'VERDICT: A', 'VERDICT: B' or 'VERDICT: TIE'.")
JUDGE_MAX_TOKENS = 64  # a verdict line; room for a model that prefixes a few words
_VERDICT = re.compile(r"verdict\W{0,5}(tie|a|b)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Pairing:
    """Which answer was shown first: the judge never learns which tier wrote which."""

    weak_first: bool

    @classmethod
    def draw(cls, rng: random.Random) -> Pairing:
        return cls(weak_first=rng.random() < 0.5)

    def grades(self, verdict: Verdict) -> tuple[float, float]:
        """(weak_score, strong_score) for the judge's verdict."""
        if verdict == "TIE":
            return 0.5, 0.5
        weak_won = (verdict == "A") == self.weak_first
        return (1.0, 0.0) if weak_won else (0.0, 1.0)


def _conversation(messages: list[Any]) -> str:
    lines = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            lines.append(f"{message.get('role', 'user')}: {text}")
    return "\n".join(lines)


def judge_messages(request_messages: list[Any], weak_answer: str, strong_answer: str,
                   pairing: Pairing) -> list[dict[str, str]]:
    first, second = (weak_answer, strong_answer) if pairing.weak_first else (strong_answer, weak_answer)
    user = (f"[Request]\n{_conversation(request_messages)}\n\n{ANSWER_A}\n{first}\n\n{ANSWER_B}\n{second}\n\n{END}\n"
            "Which answer is better?")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> Verdict | None:
    """The judge's verdict, or None when its answer says none (the last verdict wins: models restate it)."""
    if not text:
        return None
    found = _VERDICT.findall(text)
    if found:
        return found[-1].upper()  # type: ignore[no-any-return]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        winner = str(value.get("verdict") or value.get("winner") or "").strip().upper()
        if winner in ("A", "B", "TIE"):
            return winner  # type: ignore[return-value]
    stripped = text.strip().strip("*.` ").upper()
    return stripped if stripped in ("A", "B", "TIE") else None  # type: ignore[return-value]


def answer_text(body: dict[str, Any]) -> str | None:
    """The first choice's text of a chat completion, or None when it has none (a tool call, an odd body)."""
    try:
        content = body["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return content if isinstance(content, str) and content else None
