"""Rolling-summary context planning: which old turns to age out, and which summaries that needs.

Pure and deterministic: the plan depends only on the messages and the team's settings. Cut points are found by
replaying the conversation's growth turn by turn with hysteresis (when the budget is exceeded, age out enough
turns to fall to half of it), so the trimmed prefix stays byte-stable for many turns, provider prompt caches are
rebuilt rarely, and turn N+1 asks for exactly the summaries turn N already paid for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from text.tokens import DEFAULT_MODEL, count_messages

LOW_WATER = 0.5  # after trimming, the history uses at most this share of the budget
SUMMARY_SHARE = 0.15  # a summary may use this share of the budget (its max_tokens)
SUMMARY_PREFIX = "Summary of the earlier part of this conversation:\n"


@dataclass(frozen=True, slots=True)
class SummaryStep:
    """Summarize ``turns[start:end]`` on top of the summary of everything before ``start``."""

    start: int
    end: int
    key: str  # cache key: hash of all messages in turns[:end]


@dataclass(frozen=True, slots=True)
class ContextPlan:
    head: tuple[dict[str, Any], ...]  # leading system/developer messages, never summarized
    turns: tuple[tuple[dict[str, Any], ...], ...]  # the rest, grouped into units that must stay together
    cut: int  # turns[:cut] are replaced by a summary
    steps: tuple[SummaryStep, ...]  # summaries in order; the last one covers turns[:cut]
    tokens_before: int
    summary_max_tokens: int

    @property
    def trims(self) -> bool:
        return self.cut > 0

    def messages(self, summary: str | None) -> list[dict[str, Any]]:
        """The request's messages after trimming; ``summary`` None means plain truncation (summarizer failed)."""
        out = list(self.head)
        if summary:
            out.append({"role": "system", "content": SUMMARY_PREFIX + summary})
        for turn in self.turns[self.cut :]:
            out.extend(turn)
        return out


def split_turns(messages: Sequence[dict[str, Any]]) -> tuple[tuple[dict[str, Any], ...], list[list[dict[str, Any]]]]:
    """Leading system messages, then turns: each starts at a user message and holds what answers it, so an
    assistant's tool call always stays with its tool results."""
    i = 0
    while i < len(messages) and messages[i].get("role") in ("system", "developer"):
        i += 1
    head = tuple(messages[:i])
    turns: list[list[dict[str, Any]]] = []
    for message in messages[i:]:
        if message.get("role") == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return head, turns


def _key(team: str, head: Sequence[dict[str, Any]], turns: Sequence[Sequence[dict[str, Any]]], end: int) -> str:
    digest = hashlib.sha256(team.encode())
    digest.update(orjson.dumps(list(head), option=orjson.OPT_SORT_KEYS))
    for turn in turns[:end]:
        digest.update(orjson.dumps(list(turn), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def plan_context(team: str, messages: Sequence[dict[str, Any]], budget: int, keep_last_turns: int,
                 model: str = DEFAULT_MODEL) -> ContextPlan | None:
    """None when the conversation fits the budget (or nothing may be aged out)."""
    head, turns = split_turns(messages)
    head_tokens = count_messages(head, model) if head else 0
    turn_tokens = [count_messages(t, model) - 3 for t in turns]  # count_messages adds reply priming once
    total = head_tokens + sum(turn_tokens)
    if total <= budget or len(turns) <= keep_last_turns:
        return None
    summary_tokens = max(64, int(budget * SUMMARY_SHARE))
    cuts: list[int] = []
    cut = 0
    window = 0  # tokens of turns[cut:i+1]
    for i, tokens in enumerate(turn_tokens):
        window += tokens
        overhead = head_tokens + (summary_tokens if cut else 0)
        if overhead + window > budget:
            limit = i + 1 - keep_last_turns  # the last K turns at that point of the conversation stay
            target = budget * LOW_WATER - head_tokens - summary_tokens
            while cut < limit and window > target:
                window -= turn_tokens[cut]
                cut += 1
            if not cuts or cut > cuts[-1]:
                cuts.append(cut)
    cuts = [c for c in cuts if c > 0]
    if not cuts:
        return None
    steps = []
    start = 0
    for end in cuts:
        steps.append(SummaryStep(start=start, end=end, key=_key(team, head, turns, end)))
        start = end
    return ContextPlan(head=head, turns=tuple(tuple(t) for t in turns), cut=cuts[-1], steps=tuple(steps),
                       tokens_before=total, summary_max_tokens=summary_tokens)


def summary_request(previous: str | None, turns: Sequence[Sequence[dict[str, Any]]],
                    max_tokens: int) -> list[dict[str, Any]]:
    """Messages asking the cheapest tier to extend ``previous`` with ``turns``."""
    lines = []
    for turn in turns:
        for message in turn:
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode() if content else ""
            if message.get("tool_calls"):
                text += " [tool calls: " + orjson.dumps(message["tool_calls"]).decode() + "]"
            lines.append(f"{message.get('role', 'user')}: {text}")
    instruction = (
        "You maintain a running summary of a conversation. Merge the previous summary and the new turns into one "
        f"concise summary (at most {max_tokens} tokens) that keeps every fact, decision, number, name and open "
        "question a later turn may need. Write only the summary."
    )
    body = (f"Previous summary:\n{previous}\n\n" if previous else "") + "New turns:\n" + "\n".join(lines)
    return [{"role": "system", "content": instruction}, {"role": "user", "content": body}]
