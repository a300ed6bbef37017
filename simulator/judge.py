"""Judge mode: a simulated deployment asked for a verdict by ``pipeline.judge``'s prompt answers one.

Why: shadow sampling's tests and the replay harness need a judge whose answer is known in advance and parseable.
Any simulated deployment enters judge mode when the system prompt starts with ``pipeline.judge.JUDGE_MARKER``; it
prefers the longer answer (a stand-in for "more complete") and calls equal lengths a tie, so the verdict is a pure
function of the two answers, like every other simulated reply. The marker is repeated here rather than imported:
the simulator imports nothing of the pipeline.
"""

from __future__ import annotations

from typing import Any

JUDGE_MARKER = "You are tiergate's answer judge."


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j].strip() if j >= 0 else None


def judge_reply(messages: list[dict[str, Any]]) -> str | None:
    """``VERDICT: A|B|TIE`` when the request is a judge prompt; None otherwise (answer as usual)."""
    if not messages or messages[0].get("role") != "system":
        return None
    system = messages[0].get("content")
    if not isinstance(system, str) or not system.startswith(JUDGE_MARKER):
        return None
    user = next((m.get("content") for m in messages[1:] if m.get("role") == "user"), None)
    if not isinstance(user, str):
        return None
    first = _between(user, "[Answer A]", "[Answer B]")
    second = _between(user, "[Answer B]", "[End of answers]")
    if first is None or second is None:
        return "I cannot tell which answer is which."  # unparseable on purpose: the caller records no grade
    if len(first) == len(second):
        return "VERDICT: TIE"
    return "VERDICT: A" if len(first) > len(second) else "VERDICT: B"
