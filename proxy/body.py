"""Parse and check request bodies: JSON, size limit, and the fields the proxy itself relies on.

We check only what routing, metering and budgets read (model, messages, stream, token limits, tools, tags) and
pass everything else through untouched: validating whole bodies with pydantic would cost more than the rest of
the hot path, and the upstream validates its own parameters anyway.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import ApiError, bad_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return body


def _type_error(field: str, expected: str, value: Any) -> ApiError:
    return bad_request(f"'{field}' must be {expected}, got {type(value).__name__}", param=field, code="invalid_type")


def _opt_int(body: dict[str, Any], field: str, minimum: int = 1) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(field, "an integer", value)
    if value < minimum:
        raise bad_request(f"'{field}' must be >= {minimum}, got {value}", param=field)


def _opt_number(body: dict[str, Any], field: str, lo: float, hi: float) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(field, "a number", value)
    if not lo <= value <= hi:
        raise bad_request(f"'{field}' must be within [{lo}, {hi}], got {value}", param=field)


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required (use 'auto' to let tiergate choose)", param="model", code="missing_field")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _type_error("metadata", "an object", metadata)
        for key, value in metadata.items():
            if not isinstance(value, str):
                raise _type_error(f"metadata.{key}", "a string", value)
    _opt_int(body, "max_tokens")
    _opt_int(body, "max_completion_tokens")
    _opt_int(body, "n")
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0)


def check_chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", param="messages", code="missing_field")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise bad_request("'messages' must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"'{where}.role' must be one of {sorted(ROLES)}, got {role!r}", param=f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _type_error(f"{where}.content", "a string or an array of content parts", content)
        if content is None and role not in {"assistant"}:
            raise bad_request(f"'{where}.content' is required for role {role!r}", param=f"{where}.content")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    fmt = body.get("response_format")
    if fmt is not None and not isinstance(fmt, dict):
        raise _type_error("response_format", "an object", fmt)


def check_completion(body: dict[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", param="prompt", code="missing_field")
    if not isinstance(prompt, (str, list)):
        raise _type_error("prompt", "a string or an array", prompt)


def check_embeddings(body: dict[str, Any]) -> None:
    _common(body)
    value = body.get("input")
    if value is None:
        raise bad_request("'input' is required", param="input", code="missing_field")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise _type_error("input", "a string or a non-empty array", value)


def prompt_text(value: Any) -> str:
    """The text of a completions ``prompt`` or embeddings ``input`` (token arrays count as empty text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v for v in value if isinstance(v, str))
    return ""
