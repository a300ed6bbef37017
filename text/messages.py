"""The text a model reads in an OpenAI message: content strings or text parts, and tool calls' names and
arguments. Shared by token counting, the classifier's features and the simulator."""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_text(message: dict[str, Any]) -> str:
    """Everything in a message that the model reads as text: content, tool calls' names and arguments."""
    parts = [content_text(message.get("content"))]
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            fn = call.get("function") or {}
            parts.append(str(fn.get("name", "")))
            parts.append(str(fn.get("arguments", "")))
    return "".join(parts)
