"""A chat completion rendered as a Responses API ``Response`` object, and the pieces a stream reuses (the echo of
the request, output items, usage).

Usage goes through ``metering.usage.normalize_usage``, the function the ledger bills with, so the tokens a client
reads are the tokens it is billed for.
"""

from __future__ import annotations

from typing import Any

import orjson

from metering.usage import Usage, normalize_usage
from wire.responses.tool_names import NO_TOOLS, ToolNames

# What the Response object says about the request when the client did not set it (OpenAI's defaults).
_DEFAULTS: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "service_tier": "default",
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


def echo(body: dict[str, Any], max_output_tokens: int | None = None) -> dict[str, Any]:
    """The request's settings as a Response object repeats them. ``max_output_tokens``: the limit the team's
    policy applied, when it set one."""
    out = {key: body.get(key) if body.get(key) is not None else default for key, default in _DEFAULTS.items()}
    if max_output_tokens is not None:
        out["max_output_tokens"] = max_output_tokens
    return out


def item_id(prefix: str, response_id: str, index: int) -> str:
    """An output item's id, derived from the response's so it is unique across a conversation (call ids too)."""
    return f"{prefix}_{response_id.removeprefix('resp_')}{index:04x}"


def message_item(item_id_: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id_, "type": "message", "status": status, "role": "assistant",
            "content": [output_text(text)]}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(names: ToolNames, item_id_: str, call_id: str, chat_name: str, arguments: str,
              status: str) -> dict[str, Any]:
    """The item for a chat tool call: a function_call, or a custom_tool_call for a custom tool (whose ``input`` the
    model wrote as the one string argument ``input``: unwrapped, or the raw arguments if it did not follow the
    schema, so nothing it wrote is lost); named as the client named the tool, with its ``namespace`` if it has
    one."""
    namespace, name = names.responses(chat_name)
    if names.is_custom(chat_name):
        item = {"id": item_id_, "type": "custom_tool_call", "status": status, "call_id": call_id, "name": name,
                "input": custom_input(arguments)}
    else:
        item = {"id": item_id_, "type": "function_call", "status": status, "call_id": call_id, "name": name,
                "arguments": arguments}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def custom_input(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return value["input"] if isinstance(value, dict) and isinstance(value.get("input"), str) else arguments


def usage_block(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat usage block as Responses usage; None when the provider sent none."""
    if not raw:
        return None
    return responses_usage(normalize_usage(raw, "openai"))


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def envelope(response_id: str, created_at: int, model: str, settings: dict[str, Any], status: str,
             output: list[dict[str, Any]], usage: dict[str, Any] | None, finish_reason: str | None = None,
             error: dict[str, Any] | None = None, completed_at: int | None = None) -> dict[str, Any]:
    """A Response object. ``finish_reason`` "length" makes it incomplete (the output limit was reached), as OpenAI
    reports it."""
    incomplete = None
    if finish_reason == "length" and status == "completed":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter" and status == "completed":
        status, incomplete = "incomplete", {"reason": "content_filter"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": completed_at if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage,
        **settings,
    }


def from_chat(completion: dict[str, Any], response_id: str, created_at: int, settings: dict[str, Any],
              completed_at: int, names: ToolNames = NO_TOOLS) -> dict[str, Any]:
    """A chat completion (the first choice) as a Response object: a message item with the text, then one
    function_call item per tool call (custom_tool_call for custom tools; ``names`` says which, and which namespace
    a call's tool is in), in the order the model produced them."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    item_status = "incomplete" if finish == "length" else "completed"
    output: list[dict[str, Any]] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if text or refusal:
        item = message_item(item_id("msg", response_id, 0), text or "", item_status)
        if refusal and not text:
            item["content"] = [{"type": "refusal", "refusal": refusal}]
        output.append(item)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        name = fn.get("name") or ""
        prefix = "ctc" if names.is_custom(name) else "fc"
        output.append(call_item(names, item_id(prefix, response_id, len(output)), call.get("id") or "", name,
                                fn.get("arguments") or "", "completed"))
    return envelope(response_id, created_at, str(completion.get("model") or ""), settings, "completed", output,
                    usage_block(completion.get("usage")), finish, completed_at=completed_at)

