"""Apply a context plan: fetch or write the rolling summaries it needs, never failing the request for them.

Summaries are cached by the hash of everything they cover, so a conversation's next turn finds the summary its
previous turn paid for. Each missing summary extends the previous one (incremental), so an aged-out span is
summarized once. If the summarizer fails or is slower than the bound, the request goes on with plain
truncation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kvcache.store import KeyValueCache
from router.context import ContextPlan, summary_request
from text.tokens import count_messages

log = logging.getLogger("tiergate.context")

SUMMARY_TTL_S = 24 * 3600.0
# complete(messages, max_tokens) -> the cheapest tier's answer text; metered by the caller.
Complete = Callable[[list[dict[str, Any]], int], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: list[dict[str, Any]]
    summarized_turns: int
    saved_tokens: int
    summarized: bool  # False: plain truncation (summarizer failed or timed out)
    computed: int  # summaries written for this request (0 when all came from the cache)

    def note(self) -> str:
        """How the conversation was trimmed, for the client: ``trimmed;summarized=<turns>;saved_tokens=<n>``."""
        mode = f"summarized={self.summarized_turns}" if self.summarized else f"truncated={self.summarized_turns}"
        return f"trimmed;{mode};saved_tokens={self.saved_tokens}"


async def _summary(plan: ContextPlan, cache: KeyValueCache, complete: Complete) -> tuple[str, int]:
    cached: list[bytes | None] = [await cache.get(step.key) for step in reversed(plan.steps)]
    cached.reverse()
    start = max((i for i, value in enumerate(cached) if value is not None), default=-1)
    summary = cached[start].decode() if start >= 0 else None  # type: ignore[union-attr]
    computed = 0
    for step in plan.steps[start + 1 :]:
        messages = summary_request(summary, plan.turns[step.start : step.end], plan.summary_max_tokens)
        summary = (await complete(messages, plan.summary_max_tokens)).strip()
        await cache.set(step.key, summary.encode(), SUMMARY_TTL_S)
        computed += 1
    assert summary is not None
    return summary, computed


async def apply_plan(plan: ContextPlan, cache: KeyValueCache, complete: Complete, timeout_s: float,
                     model: str) -> Trimmed:
    try:
        async with asyncio.timeout(timeout_s):
            summary, computed = await _summary(plan, cache, complete)
    except Exception as exc:  # timeouts, upstream errors, budget refusals: all fall back to truncation
        log.warning("summarizer unavailable (%s); truncating instead", type(exc).__name__)
        summary, computed = None, 0
    messages = plan.messages(summary)
    saved = plan.tokens_before - (count_messages(messages, model) - 3)
    return Trimmed(messages=messages, summarized_turns=plan.cut, saved_tokens=max(0, saved),
                   summarized=summary is not None, computed=computed)
