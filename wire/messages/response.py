"""A chat completion rendered as an Anthropic ``Message``: the answer a translated ``/v1/messages`` request gets.

Usage follows Anthropic's convention, ``input_tokens`` *excluding* cache reads and writes (which OpenAI's
``prompt_tokens`` includes), from the same normalisation the ledger bills by (``metering.usage``), so the numbers a
client sees are the numbers it pays for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from metering.usage import Usage, estimate_usage, normalize_usage
from text.messages import content_text

# finish_reason -> stop_reason; "stop" is end_turn unless the upstream says a stop sequence ended it.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}


def usage_of(raw: Any, prompt_tokens: Callable[[], int], text: str, model: str) -> Usage:
    """The answer's usage as the ledger records it: the upstream's block, or (none sent) the same tiktoken estimate
    the pipeline bills (``pipeline.records.usage_of``); ``prompt_tokens`` is only counted then."""
    if isinstance(raw, dict) and raw:
        return normalize_usage(raw, "openai")
    return estimate_usage(prompt_tokens(), text, model)


def anthropic_usage(usage: Usage) -> dict[str, int]:
    return {"input_tokens": usage.uncached_prompt_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "output_tokens": usage.completion_tokens}


def stop_reason(finish_reason: Any, matched: Any, stop_sequences: tuple[str, ...]) -> tuple[str, str | None]:
    """``stop_reason`` and ``stop_sequence``. Chat completions says only "stop" when a stop sequence ended the
    answer; vLLM-style servers add the matched string as the choice's ``stop_reason``, which is used when given."""
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish_reason, "end_turn"), None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as tool_use ``input``; an object always, as Anthropic's is."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments) if isinstance(arguments, (str, bytes)) and arguments else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def reasoning_of(holder: dict[str, Any]) -> str | None:
    """Reasoning text a chat server returned beside the answer (vLLM and DeepSeek: ``reasoning_content``)."""
    text = holder.get("reasoning_content") or holder.get("reasoning")
    return text if isinstance(text, str) and text else None


def to_message(chat: dict[str, Any], response_id: str, stop_sequences: tuple[str, ...],
               prompt_tokens: Callable[[], int], model: str) -> dict[str, Any]:
    """``chat`` (a chat completion) as a Message with id ``response_id``. ``prompt_tokens`` and ``model`` estimate
    the usage when the upstream sent none, as the pipeline does."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    thinking = reasoning_of(message)
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = content_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                        "input": tool_input(function.get("arguments"))})
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    usage = usage_of(chat.get("usage"), prompt_tokens, text, model)
    return {"id": response_id, "type": "message", "role": "assistant", "model": chat.get("model") or model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": anthropic_usage(usage)}
