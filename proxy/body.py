"""Parse and check request bodies once, at the edge: the pipeline after this may assume well-formed input.

Every field the proxy itself reads (model, messages and their roles, content parts and tool calls, tools, token
limits, tags) is checked for type and shape here, and the whole body for nesting depth, so a malformed body is a 400
naming the field, never a ``TypeError`` deep in routing or metering (a 500) and never a record the ledger's database
refuses. Fields the proxy only passes through are not validated beyond depth: the upstream checks its own parameters.

Hand-written rather than a schema library: on the benchmark body it is as fast as msgspec and faster than
pydantic-core, both of which still need a second parse for the pass-through dict (benchmarks/body/RESULTS.md).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import orjson

from proxy.errors import ApiError, bad_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Deeper than any real request: a tool's JSON schema nested 25 objects deep is ~55 levels from the body's root, and
# OpenAI's structured outputs allow 10. The limit is far below orjson's encoder limit (255), so a body we accept can
# always be serialised again for an upstream, cache key or prefix hash.
MAX_DEPTH = 64
# OpenAI's own bounds: at most 16 metadata pairs, keys up to 64 characters, ``n`` up to 128.
MAX_TAGS = 16  # per source: ``metadata`` and x-tiergate-tag-* headers each
MAX_TAG_KEY_CHARS = 64
# Below OpenAI's 512 for metadata values: every tag is a key of the ledger's tag rollup, and PostgreSQL refuses
# b-tree index rows over 2,704 bytes; 256 characters are at most 1 KiB of UTF-8, with room for the rest of the row.
MAX_TAG_VALUE_CHARS = 256
MAX_N = 128
MAX_BEST_OF = 20  # OpenAI's bound for legacy completions
TAG_HEADER_PREFIX = "x-tiergate-tag-"

# C0 and C1 control characters (NUL among them): PostgreSQL cannot store NUL in text, and the rest would corrupt
# logs and CSV exports. Tags are labels, so nothing legitimate is lost.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Content part type -> (field that must be present, the types it may have). Image parts other than OpenAI's
# ``image_url`` are the ones router.features also treats as needing vision.
_PARTS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "text": ("text", str),
    "input_text": ("text", str),
    "refusal": ("refusal", str),
    "image_url": ("image_url", (dict, str)),
    "input_image": ("image_url", str),
    "image": ("source", dict),
    "input_audio": ("input_audio", dict),
    "file": ("file", dict),
}
_TOOL_TYPES = ("function", "custom")


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    _check_depth(body)
    return body


def _too_deep(value: dict[str, Any] | list[Any], levels_left: int) -> bool:
    """Whether ``value`` nests deeper than ``levels_left``; recursion stops there, so it never goes past MAX_DEPTH."""
    if levels_left <= 0:
        return True
    for item in value.values() if type(value) is dict else value:
        if (type(item) is dict or type(item) is list) and _too_deep(item, levels_left - 1):
            return True
    return False


def _check_depth(body: dict[str, Any]) -> None:
    for key, value in body.items():
        if (type(value) is dict or type(value) is list) and _too_deep(value, MAX_DEPTH - 1):
            raise bad_request(f"'{key}' is nested more than {MAX_DEPTH} levels deep", param=key, code="too_deep")


def shown(value: Any) -> str:
    """A client's value for an error message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_error(field: str, expected: str, value: Any) -> ApiError:
    return bad_request(f"'{field}' must be {expected}, got {type(value).__name__}", param=field, code="invalid_type")


def _opt_int(body: dict[str, Any], field: str, minimum: int = 1, maximum: int | None = None) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(field, "an integer", value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise bad_request(f"'{field}' must be {bound}, got {value}", param=field)


def _opt_number(body: dict[str, Any], field: str, lo: float, hi: float) -> None:
    value = body.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(field, "a number", value)
    if not lo <= value <= hi:
        raise bad_request(f"'{field}' must be within [{lo}, {hi}], got {value}", param=field)


def _opt(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, expected: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise _type_error(f"{where}.{key}" if where else key, expected, value)
    return value


def _check_tag(key: str, value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _type_error(param, "a string", value)
    if not key or len(key) > MAX_TAG_KEY_CHARS or CONTROL_CHARS.search(key):
        raise bad_request(f"tag names must be 1 to {MAX_TAG_KEY_CHARS} characters without control characters "
                          f"(in '{param}')", param=param, code="invalid_tag")
    if len(value) > MAX_TAG_VALUE_CHARS or CONTROL_CHARS.search(value):
        raise bad_request(f"'{param}' must be at most {MAX_TAG_VALUE_CHARS} characters without control characters",
                          param=param, code="invalid_tag")


def _check_tag_count(count: int, param: str) -> None:
    if count > MAX_TAGS:
        raise bad_request(f"at most {MAX_TAGS} tags may be sent in '{param}', got {count}", param=param,
                          code="invalid_tag")


def header_tags(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Tags from ``x-tiergate-tag-<name>: <value>`` headers, checked like ``metadata`` (names are lower case)."""
    tags = {k[len(TAG_HEADER_PREFIX):]: v for k, v in headers if k.startswith(TAG_HEADER_PREFIX)}
    if tags:
        _check_tag_count(len(tags), f"{TAG_HEADER_PREFIX}*")
        for key, value in tags.items():
            _check_tag(key, value, TAG_HEADER_PREFIX + key)
    return tags


def _common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required (use 'auto' to let tiergate choose)", param="model", code="missing_field")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean", stream)
    options = _opt(body, "stream_options", dict, "", "an object")
    if options is not None:
        _opt(options, "include_usage", bool, "stream_options", "a boolean")
    metadata = _opt(body, "metadata", dict, "", "an object")
    if metadata:
        _check_tag_count(len(metadata), "metadata")
        for key, value in metadata.items():
            _check_tag(key, value, f"metadata.{key}")
    _opt(body, "user", str, "", "a string")
    _opt_int(body, "max_tokens")
    _opt_int(body, "max_completion_tokens")
    _opt_int(body, "n", maximum=MAX_N)
    _opt_number(body, "temperature", 0.0, 2.0)
    _opt_number(body, "top_p", 0.0, 1.0)


def _check_parts(parts: list[Any], where: str) -> None:
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise _type_error(at, "a content part object", part)
        kind = part.get("type")
        spec = _PARTS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise bad_request(f"'{at}.type' must be one of {sorted(_PARTS)}, got {shown(kind)}", param=f"{at}.type")
        key, allowed = spec
        value = part.get(key)
        if not isinstance(value, allowed):
            raise bad_request(f"'{at}.{key}' is required for a {kind!r} part and must be "
                              f"{'a string' if allowed is str else 'an object'}", param=f"{at}.{key}")
        if kind == "image_url" and isinstance(value, dict):
            if not isinstance(value.get("url"), str):
                raise bad_request(f"'{at}.image_url.url' must be a string", param=f"{at}.image_url.url")
            _opt(value, "detail", str, f"{at}.image_url", "a string")


def _check_function(fn: Any, where: str, fields: tuple[str, ...]) -> None:
    """An object whose ``fields`` are all strings (a tool call's name and arguments, a tool's name)."""
    if not isinstance(fn, dict):
        raise _type_error(where, "an object", fn)
    for key in fields:
        if not isinstance(fn.get(key), str):
            raise bad_request(f"'{where}.{key}' must be a string", param=f"{where}.{key}")


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise _type_error(where, "an array", calls)
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise _type_error(at, "an object", call)
        if not isinstance(call.get("id"), str):
            raise bad_request(f"'{at}.id' must be a string", param=f"{at}.id")
        kind = call.get("type", "function")
        if kind not in _TOOL_TYPES:
            raise bad_request(f"'{at}.type' must be one of {list(_TOOL_TYPES)}, got {shown(kind)}", param=f"{at}.type")
        if kind == "function":
            _check_function(call.get("function"), f"{at}.function", ("name", "arguments"))
        else:
            _check_function(call.get("custom"), f"{at}.custom", ("name", "input"))


def _check_messages(messages: list[Any]) -> None:
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"'{where}.role' must be one of {sorted(ROLES)}, got {shown(role)}", param=f"{where}.role")
        content = message.get("content")
        if type(content) is str:  # the common case first
            pass
        elif isinstance(content, list):
            _check_parts(content, f"{where}.content")
        elif content is not None:
            raise _type_error(f"{where}.content", "a string or an array of content parts", content)
        elif role != "assistant":
            raise bad_request(f"'{where}.content' is required for role {role!r}", param=f"{where}.content")
        if len(message) > 2 or content is None:  # else it holds role and content only: nothing more to check
            _opt(message, "name", str, where, "a string")
            _opt(message, "tool_call_id", str, where, "a string")
            calls = message.get("tool_calls")
            if calls is not None:
                _check_tool_calls(calls, f"{where}.tool_calls")
            call = message.get("function_call")
            if call is not None:
                _check_function(call, f"{where}.function_call", ("name", "arguments"))


def _check_tools(body: dict[str, Any]) -> None:
    tools = _opt(body, "tools", list, "", "an array")
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _type_error(where, "an object", tool)
        kind = tool.get("type", "function")
        if kind not in _TOOL_TYPES:
            raise bad_request(f"'{where}.type' must be one of {list(_TOOL_TYPES)}, got {shown(kind)}", param=f"{where}.type")
        _check_function(tool.get(kind), f"{where}.{kind}", ("name",))
        if kind == "function":
            _opt(tool["function"], "parameters", dict, f"{where}.function", "an object")
    functions = _opt(body, "functions", list, "", "an array")
    for i, fn in enumerate(functions or ()):
        _check_function(fn, f"functions[{i}]", ("name",))
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, (str, dict)):
        raise _type_error("tool_choice", "a string or an object", choice)


def check_chat(body: dict[str, Any]) -> None:
    _common(body)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", param="messages", code="missing_field")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise bad_request("'messages' must contain at least one message", param="messages")
    _check_messages(messages)
    if len(body) > 2:  # model and messages only: the rest is absent
        _check_tools(body)
        fmt = _opt(body, "response_format", dict, "", "an object")
        if fmt is not None and not isinstance(fmt.get("type"), str):
            raise bad_request("'response_format.type' must be a string", param="response_format.type")


def _check_token_input(value: Any, field: str) -> None:
    """A string, or an array of strings, of token ids, or of token-id arrays (OpenAI's four prompt shapes)."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise _type_error(field, "a string or a non-empty array", value)
    first = value[0]
    if isinstance(first, str):
        kind, expected = str, "strings"
    elif isinstance(first, list):
        kind, expected = list, "token arrays"
    else:
        kind, expected = int, "token ids"
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, kind) or (kind is list and not _token_ids(item)):
            raise bad_request(f"'{field}[{i}]': every item of '{field}' must be one of {expected} (as the first is)",
                              param=f"{field}[{i}]", code="invalid_type")
        if kind is int and item < 0:
            raise bad_request(f"'{field}[{i}]' must be a token id >= 0, got {item}", param=f"{field}[{i}]")


def _token_ids(items: list[Any]) -> bool:
    return all(type(t) is int and t >= 0 for t in items)


def check_completion(body: dict[str, Any]) -> None:
    _common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", param="prompt", code="missing_field")
    _check_token_input(prompt, "prompt")
    _opt_int(body, "best_of", maximum=MAX_BEST_OF)


def check_embeddings(body: dict[str, Any]) -> None:
    _common(body)
    value = body.get("input")
    if value is None:
        raise bad_request("'input' is required", param="input", code="missing_field")
    _check_token_input(value, "input")

