"""What a request needs from a model, read from its OpenAI body without HTTP or policy knowledge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orjson import dumps

from metering.tokens import count_messages, count_text

_IMAGE_PARTS = {"image_url", "input_image", "image"}


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    needs: frozenset[str]  # capabilities: tools, json_schema, vision
    prompt_tokens: int  # tiktoken estimate; billing always uses the provider's usage
    max_output_tokens: int | None  # what the client asked for (max_completion_tokens wins over max_tokens)
    system_tokens: int = 0  # tokens of the leading system/developer messages (the static prompt)


def _has_image(messages: list[Any]) -> bool:
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    return True
    return False


def chat_features(body: dict[str, Any], model_hint: str = "gpt-4o") -> RequestFeatures:
    """Features of a validated chat-completions body."""
    messages = body.get("messages") or []
    needs = set()
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs.add("json_schema")
    if _has_image(messages):
        needs.add("vision")
    prompt = count_messages(messages, model_hint)
    if body.get("tools"):
        prompt += count_text(dumps(body["tools"]).decode(), model_hint)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return RequestFeatures(needs=frozenset(needs), prompt_tokens=prompt, max_output_tokens=limit,
                           system_tokens=system_prompt_tokens(messages, model_hint))


def system_prompt_tokens(messages: list[Any], model_hint: str = "gpt-4o") -> int:
    """Tokens of the leading system/developer messages: the static prompt an app resends on every call."""
    head = 0
    while head < len(messages) and isinstance(messages[head], dict) and messages[head].get("role") in ("system", "developer"):
        head += 1
    return count_messages(messages[:head], model_hint) - 3 if head else 0  # minus the reply priming


def prompt_features(prompt: str, max_tokens: int | None, model_hint: str = "gpt-4o") -> RequestFeatures:
    """Features of a legacy completions or embeddings input (text only, no capabilities)."""
    return RequestFeatures(needs=frozenset(), prompt_tokens=count_text(prompt, model_hint), max_output_tokens=max_tokens)
