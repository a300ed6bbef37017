"""Provider usage blocks normalised to one shape, and their exact cost.

The incumbent's billing bugs all live here: Anthropic's ``input_tokens`` *excludes* cache reads and writes while
OpenAI's ``prompt_tokens`` *includes* cached tokens, and litellm's OpenAI-format usage carries the cache counts twice
(in ``prompt_tokens_details`` and again as top-level ``cache_read_input_tokens`` / ``cache_creation_input_tokens``,
both already inside ``prompt_tokens``). Adding any of those to ``prompt_tokens`` double counts. ``Usage`` therefore
has one meaning whatever the source: ``prompt_tokens`` is every input token, and the cache counts are subsets of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any

from metering.money import NANOS_PER_USD
from metering.prices import Price

_NANOS = Decimal(NANOS_PER_USD)

@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request; cache and reasoning counts are subsets of prompt and completion counts."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # of ``cache_write_tokens``, those written for an hour (Anthropic's 2x price)
    reasoning_tokens: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        counts = (self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.cache_write_tokens,
                  self.cache_write_1h_tokens, self.reasoning_tokens)
        if any(not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"token counts must be non-negative ints: {self}")
        if self.cached_tokens + self.cache_write_tokens > self.prompt_tokens:
            raise ValueError(f"cache tokens exceed prompt tokens: {self}")
        if self.reasoning_tokens > self.completion_tokens:
            raise ValueError(f"reasoning tokens exceed completion tokens: {self}")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(f"1-hour cache writes exceed cache writes: {self}")

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens - self.cache_write_tokens


def _int(block: Mapping[str, Any] | None, *keys: str) -> int:
    """First present integer among ``keys``; providers send explicit nulls, so None counts as absent."""
    if type(block) is not dict and not isinstance(block, Mapping):  # an ABC check costs ~1 us; JSON gives dicts
        return 0
    for key in keys:
        value = block.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    return 0


def _has(block: Mapping[str, Any], *keys: str) -> bool:
    return any(block.get(k) is not None for k in keys)


def _openai(raw: Mapping[str, Any]) -> Usage:
    """OpenAI / Azure chat usage, and litellm's OpenAI-format usage for every provider.

    Cache counts are taken from ``prompt_tokens_details`` first; the top-level litellm mirrors are only a fallback
    (never added), and DeepSeek's ``prompt_cache_hit_tokens`` is the same subset under another name.
    """
    prompt = _int(raw, "prompt_tokens")
    details = raw.get("prompt_tokens_details") or {}
    cached = _int(details, "cached_tokens") or _int(raw, "cache_read_input_tokens", "prompt_cache_hit_tokens")
    write = _int(details, "cache_write_tokens", "cache_creation_tokens") or _int(raw, "cache_creation_input_tokens")
    completion = _int(raw, "completion_tokens")
    reasoning = _int(raw.get("completion_tokens_details") or {}, "reasoning_tokens") or _int(raw, "reasoning_tokens")
    return _checked(prompt, completion, cached, write, reasoning)


def _openai_responses(raw: Mapping[str, Any]) -> Usage:
    """OpenAI Responses API: ``input_tokens`` includes ``input_tokens_details.cached_tokens`` (unlike Anthropic)."""
    return _checked(
        _int(raw, "input_tokens"),
        _int(raw, "output_tokens"),
        _int(raw.get("input_tokens_details") or {}, "cached_tokens"),
        0,
        _int(raw.get("output_tokens_details") or {}, "reasoning_tokens"),
    )


def _anthropic(raw: Mapping[str, Any]) -> Usage:
    """Anthropic Messages API (also via Vertex and Bedrock InvokeModel): input excludes cache reads and writes.

    Extended-thinking tokens are billed inside ``output_tokens``; Anthropic does not report them separately. Writes
    kept an hour (``cache_creation.ephemeral_1h_input_tokens``, a ``cache_control`` with ``ttl: 1h``) cost more than
    the default 5-minute ones, so they are counted apart.
    """
    read = _int(raw, "cache_read_input_tokens")
    write = _int(raw, "cache_creation_input_tokens")
    creation = raw.get("cache_creation")
    hour = min(_int(creation if isinstance(creation, Mapping) else None, "ephemeral_1h_input_tokens"), write)
    return _checked(_int(raw, "input_tokens") + read + write, _int(raw, "output_tokens"), read, write, 0, hour)


def _bedrock_converse(raw: Mapping[str, Any]) -> Usage:
    """Bedrock Converse: camelCase, ``inputTokens`` excludes cache reads and writes (as litellm's transform_usage)."""
    read = _int(raw, "cacheReadInputTokens", "cacheReadInputTokenCount")
    write = _int(raw, "cacheWriteInputTokens", "cacheWriteInputTokenCount")
    return _checked(_int(raw, "inputTokens") + read + write, _int(raw, "outputTokens"), read, write, 0)


def _gemini(raw: Mapping[str, Any]) -> Usage:
    """Gemini / Vertex ``usageMetadata``: ``promptTokenCount`` includes ``cachedContentTokenCount``; thoughts are
    outside ``candidatesTokenCount`` but billed as output; tool-use prompt tokens are billed as input (as litellm)."""
    thoughts = _int(raw, "thoughtsTokenCount")
    return _checked(
        _int(raw, "promptTokenCount") + _int(raw, "toolUsePromptTokenCount"),
        _int(raw, "candidatesTokenCount") + thoughts,
        _int(raw, "cachedContentTokenCount"),
        0,
        thoughts,
    )


def _checked(prompt: int, completion: int, cached: int, write: int, reasoning: int, write_1h: int = 0) -> Usage:
    # A provider bug must not make the bill negative: a prompt smaller than its cached part is read as exclusive.
    return Usage(
        prompt_tokens=max(prompt, cached + write),
        completion_tokens=max(completion, reasoning),
        cached_tokens=cached,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=reasoning,
    )


def normalize_usage(raw: Mapping[str, Any], provider: str) -> Usage:
    """One ``Usage`` from a provider's usage block.

    The block's own keys decide its shape (litellm hands every provider back in OpenAI format, so a Bedrock request
    served through litellm has ``prompt_tokens``); ``provider`` only settles the one ambiguous case, ``input_tokens``,
    which is exclusive of cache for Anthropic and inclusive for OpenAI's Responses API.
    """
    if _has(raw, "prompt_tokens", "completion_tokens"):
        return _openai(raw)
    if _has(raw, "inputTokens", "outputTokens"):
        return _bedrock_converse(raw)
    if _has(raw, "promptTokenCount", "candidatesTokenCount"):
        return _gemini(raw)
    if isinstance(raw.get("usageMetadata"), Mapping):
        return _gemini(raw["usageMetadata"])
    if _has(raw, "input_tokens", "output_tokens"):
        anthropic_like = _has(raw, "cache_read_input_tokens", "cache_creation_input_tokens")
        if "anthropic" in provider or (
            anthropic_like and not _has(raw, "input_tokens_details")
        ):
            return _anthropic(raw)
        return _openai_responses(raw)
    raise ValueError(f"unrecognised usage shape from {provider!r}: keys {sorted(raw)}")


def cost_nanos(usage: Usage, price: Price) -> int:
    """Exact cost in nano-dollars: every class of token at its price, summed in Decimal, rounded once (half-even)."""
    dollars = (
        usage.uncached_prompt_tokens * price.input
        + usage.cached_tokens * price.cached_input
        + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * price.cache_write
        + usage.cache_write_1h_tokens * price.cache_write_1h
        + usage.completion_tokens * price.output
    )
    return int((dollars * _NANOS).to_integral_value(rounding=ROUND_HALF_EVEN))


def worst_case_nanos(prompt_tokens: int, max_tokens: int, price: Price) -> int:
    """The reservation for a request: every prompt token at the dearer of the input and cache-write prices,
    ``max_tokens`` at the output price, rounded up so a reservation never undershoots the cost it guards."""
    dollars = prompt_tokens * max(price.input, price.cache_write, price.cache_write_1h) + max_tokens * price.output
    return int((dollars * _NANOS).to_integral_value(rounding=ROUND_CEILING))


def estimate_usage(prompt_tokens: int, completion_text: str, model: str) -> Usage:
    """Counts with tiktoken when the upstream sent no usage (client disconnect, cut stream), flagged estimated.

    ``prompt_tokens`` comes from the caller, who counted the request already (``count_messages``). Nothing is
    assumed cached: the estimate errs towards the higher bill rather than towards $0.
    """
    from text.tokens import count_text

    return Usage(prompt_tokens=prompt_tokens, completion_tokens=count_text(completion_text, model), estimated=True)
