"""What a request needs from a model, read from its OpenAI body without HTTP or policy knowledge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orjson import dumps

from text.tokens import DEFAULT_MODEL, count_messages, count_text

_IMAGE_PARTS = {"image_url", "input_image", "image"}


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    needs: frozenset[str]  # capabilities: tools, json_schema, vision
    prompt_tokens: int  # every input token the provider bills (all prompts of a batch); tiktoken o200k count
    max_output_tokens: int | None  # the client's bound on each completion (the larger of max_tokens and
    #                                max_completion_tokens when both are sent: the provider may honour either)
    system_tokens: int = 0  # tokens of the leading system/developer messages (the static prompt)
    tool_tokens: int = 0  # tokens of the tools' JSON (in prompt_tokens): with system_tokens, the static prefix
    completions: int = 1  # completions the provider generates and bills: n (or best_of) per prompt; 0 for embeddings
    # the largest single prompt of a batch (context window); None: prompt_tokens
    longest_prompt_tokens: int | None = None

    @property
    def context_tokens(self) -> int:
        """What one model call must fit in its context window: a batch's prompts are answered one by one."""
        return self.prompt_tokens if self.longest_prompt_tokens is None else self.longest_prompt_tokens


def _has_image(messages: list[Any]) -> bool:
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    return True
    return False


def _count(value: Any) -> int:
    """A positive count field (``n``, ``best_of``) or 1; the edge refuses anything else before it gets here."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _output_limit(body: dict[str, Any]) -> int | None:
    limits = [v for v in (body.get("max_completion_tokens"), body.get("max_tokens"))
              if isinstance(v, int) and not isinstance(v, bool)]
    return max(limits) if limits else None


def chat_features(body: dict[str, Any], model_hint: str = DEFAULT_MODEL) -> RequestFeatures:
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
    tools = count_text(dumps(body["tools"]).decode(), model_hint) if body.get("tools") else 0
    return RequestFeatures(needs=frozenset(needs), prompt_tokens=count_messages(messages, model_hint) + tools,
                           max_output_tokens=_output_limit(body),
                           system_tokens=system_prompt_tokens(messages, model_hint), tool_tokens=tools,
                           completions=_count(body.get("n")))


def system_prompt_tokens(messages: list[Any], model_hint: str = DEFAULT_MODEL) -> int:
    """Tokens of the leading system/developer messages: the static prompt an app resends on every call."""
    head = 0
    while (head < len(messages) and isinstance(messages[head], dict)
           and messages[head].get("role") in ("system", "developer")):
        head += 1
    return count_messages(messages[:head], model_hint) - 3 if head else 0  # minus the reply priming


def prompt_token_counts(value: Any, model_hint: str = DEFAULT_MODEL) -> list[int]:
    """Tokens of each prompt of a completions ``prompt`` or embeddings ``input``: a string, a token array (its
    length is its count), or a list of strings and token arrays. Stray items count as one token each (the edge
    refuses them; counting never undercounts what an upstream might accept)."""
    if isinstance(value, str):
        return [count_text(value, model_hint)]
    if not isinstance(value, list):
        return []
    if value and all(isinstance(item, int) for item in value):
        return [len(value)]
    return [count_text(item, model_hint) if isinstance(item, str) else len(item) if isinstance(item, list) else 1
            for item in value]


def completion_features(body: dict[str, Any], model_hint: str = DEFAULT_MODEL) -> RequestFeatures:
    """Features of a validated legacy completions body: every prompt is billed, and each gets ``n`` completions
    (``best_of`` of them when larger: the provider generates and bills all ``best_of``, returns ``n``)."""
    prompts = prompt_token_counts(body.get("prompt"), model_hint)
    per_prompt = max(_count(body.get("n")), _count(body.get("best_of")))
    return RequestFeatures(needs=frozenset(), prompt_tokens=sum(prompts), max_output_tokens=_output_limit(body),
                           completions=max(len(prompts), 1) * per_prompt, longest_prompt_tokens=max(prompts, default=0))


def embedding_features(body: dict[str, Any], model_hint: str = DEFAULT_MODEL) -> RequestFeatures:
    """Features of a validated embeddings body: every input is billed as prompt, nothing as output."""
    inputs = prompt_token_counts(body.get("input"), model_hint)
    return RequestFeatures(needs=frozenset(), prompt_tokens=sum(inputs), max_output_tokens=None, completions=0,
                           longest_prompt_tokens=max(inputs, default=0))
