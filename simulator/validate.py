"""Request validation with OpenAI's messages, so clients and the proxy see the errors the real API would send.

Only what a proxy plausibly gets wrong is checked (missing fields, wrong JSON types, impossible values); the
simulator is lenient about everything it ignores anyway (temperature, logit_bias, ...).
"""

from __future__ import annotations

from typing import Any

from simulator.errors import invalid

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", bool: "a boolean", int: "an integer"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number" if isinstance(value, float) else "an integer"
    return _TYPE_NAMES.get(type(value), "an unsupported value")


def _check_type(body: dict[str, Any], name: str, kind: type, *, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        return None
    # bool is a subclass of int in Python but not in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(
            f"Invalid type for '{name}': expected {_TYPE_NAMES[kind]}, but got {_json_type(value)} instead.",
            name,
            "invalid_type",
        )
    return value


def _check_positive(body: dict[str, Any], name: str, upper: int | None = None) -> None:
    value = _check_type(body, name, int)
    if value is not None and (value < 1 or (upper is not None and value > upper)):
        bound = f" and at most {upper}" if upper else ""
        raise invalid(f"Invalid '{name}': integer must be at least 1{bound}; got {value}.", name, "invalid_value")


def _check_common(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Invalid request body: expected a JSON object.", None, "invalid_type")
    model = _check_type(body, "model", str, required=True)
    if not model:
        raise invalid("Invalid 'model': empty string.", "model", "invalid_value")
    return body


def _check_stream(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid(
            f"Invalid type for 'stream': expected a boolean, but got {_json_type(stream)} instead.", "stream",
            "invalid_type",
        )
    if _check_type(body, "stream_options", dict) is not None and not stream:
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")


def _check_stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise invalid("Invalid 'stop': expected a string or an array of at most 4 strings.", "stop", "invalid_type")


def _check_tools(body: dict[str, Any]) -> None:
    tools = _check_type(body, "tools", list) or []
    names = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}].function.name",
                          "missing_required_parameter")
        names.add(fn["name"])
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                          "tool_choice")
        return
    name = ((choice.get("function") or {}).get("name")) if isinstance(choice, dict) else None
    if name not in names:
        raise invalid("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function named in "
                      "'tools'.", "tool_choice", "invalid_value")


def _check_response_format(body: dict[str, Any]) -> None:
    fmt = _check_type(body, "response_format", dict)
    if fmt is None:
        return
    if fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise invalid("Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
                      "response_format.type", "invalid_value")
    if fmt["type"] == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("name"), str):
        raise invalid("Missing required parameter: 'response_format.json_schema.name'.",
                      "response_format.json_schema.name", "missing_required_parameter")


def validate_chat(body: Any) -> dict[str, Any]:
    """Raise ``SimulatedError`` (400) if ``body`` is not a chat completion request OpenAI would accept."""
    body = _check_common(body)
    messages = _check_type(body, "messages", list, required=True)
    if not messages:
        raise invalid("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages",
                      "empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(message)} "
                          "instead.", f"messages[{i}]", "invalid_type")
        if message.get("role") not in _ROLES:
            raise invalid(f"Invalid value: '{message.get('role')}'. Supported values are: 'system', 'assistant', "
                          f"'user', 'function', 'tool', and 'developer'.", f"messages[{i}].role", "invalid_value")
    for name in ("max_tokens", "max_completion_tokens"):
        _check_positive(body, name)
    _check_positive(body, "n", 128)
    _check_type(body, "seed", int)
    _check_stream(body)
    _check_stop(body)
    _check_tools(body)
    _check_response_format(body)
    return body


def _is_token_array(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _check_inputs(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and bool(value)
        and (_is_token_array(value) or all(isinstance(v, str) or _is_token_array(v) for v in value))
    )
    if not ok:
        raise invalid(f"Invalid '{name}': expected a string, an array of strings, an array of tokens or an array "
                      "of token arrays.", name, "invalid_type")


def validate_completion(body: Any) -> dict[str, Any]:
    """Raise ``SimulatedError`` (400) if ``body`` is not a legacy completion request OpenAI would accept."""
    body = _check_common(body)
    _check_inputs(body, "prompt")
    _check_positive(body, "max_tokens")
    _check_positive(body, "n", 128)
    _check_stream(body)
    _check_stop(body)
    return body


def validate_embeddings(body: Any) -> dict[str, Any]:
    """Raise ``SimulatedError`` (400) if ``body`` is not an embeddings request OpenAI would accept."""
    body = _check_common(body)
    _check_inputs(body, "input")
    if body["input"] == "":
        raise invalid("'$.input' is invalid: it must not be an empty string.", "input", "invalid_value")
    _check_positive(body, "dimensions", 8192)
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise invalid("Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format", "invalid_value")
    return body
