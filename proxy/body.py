"""Parse and check request bodies once, at the edge: the pipeline after this may assume well-formed input.

Every field the proxy itself reads (model, messages and their roles, content parts and tool calls, tools, token
limits, tags) is checked for type and shape here, and the whole body for nesting depth, so a malformed body is a 400
naming the field, never a ``TypeError`` deep in routing or metering (a 500) and never a record the ledger's database
refuses. Fields the proxy only passes through are not validated beyond depth: the upstream checks its own parameters.

Hand-written rather than a schema library (benchmarks/body/RESULTS.md): on the benchmark body it ties msgspec (which
still needs orjson's dict for the pass-through fields) and beats pydantic-core, and either library would leave the
prompt shapes, header tags, depth and the content rule to hand-written code anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from pipeline.errors import TiergateError
from proxy.errors import bad_request

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
        raise bad_request("the request body is empty; expected a JSON object", code="invalid_request.invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}",
                          code="invalid_request.invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_request.invalid_json")
    check_depth(body)
    return body


def _too_deep(value: dict[str, Any] | list[Any], levels_left: int) -> bool:
    """Whether ``value`` nests deeper than ``levels_left``; recursion stops there, so it never goes past MAX_DEPTH."""
    if levels_left <= 0:
        return True
    for item in value.values() if type(value) is dict else value:
        if (type(item) is dict or type(item) is list) and _too_deep(item, levels_left - 1):
            return True
    return False


def check_depth(body: dict[str, Any]) -> None:
    """400 naming the top-level field that nests deeper than MAX_DEPTH. The walk visits containers only, so its
    cost follows the body's structure, not its size (counting brackets in the raw bytes cost more on every body)."""
    for key, value in body.items():
        if (type(value) is dict or type(value) is list) and _too_deep(value, MAX_DEPTH - 1):
            raise bad_request(f"'{key}' is nested more than {MAX_DEPTH} levels deep", param=key,
                              code="invalid_request.too_deep")


def shown(value: Any) -> str:
    """A client's value for an error message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_error(field: str, expected: str, value: Any) -> TiergateError:
    return bad_request(f"'{field}' must be {expected}, got {type(value).__name__}", param=field,
                       code="invalid_request.invalid_type")


def _int_field(field: str, maximum: int | None = None) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(field, "an integer", value)
        if value < 1 or (maximum is not None and value > maximum):
            bound = f"from 1 to {maximum}" if maximum is not None else ">= 1"
            raise bad_request(f"'{field}' must be {bound}, got {value}", param=field)
    return check


def _number_field(field: str, lo: float, hi: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(field, "a number", value)
        if not lo <= value <= hi:
            raise bad_request(f"'{field}' must be within [{lo}, {hi}], got {value}", param=field)
    return check


def _type_field(field: str, kind: type | tuple[type, ...], expected: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, kind):
            raise _type_error(field, expected, value)
    return check


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
                          f"(in '{param}')", param=param, code="invalid_request.invalid_tag")
    if len(value) > MAX_TAG_VALUE_CHARS or CONTROL_CHARS.search(value):
        raise bad_request(f"'{param}' must be at most {MAX_TAG_VALUE_CHARS} characters without control characters",
                          param=param, code="invalid_request.invalid_tag")


def _check_tag_count(count: int, param: str) -> None:
    if count > MAX_TAGS:
        raise bad_request(f"at most {MAX_TAGS} tags may be sent in '{param}', got {count}", param=param,
                          code="invalid_request.invalid_tag")


def header_tags(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Tags from ``x-tiergate-tag-<name>: <value>`` headers, checked like ``metadata`` (names are lower case)."""
    tags = {k[len(TAG_HEADER_PREFIX):]: v for k, v in headers if k.startswith(TAG_HEADER_PREFIX)}
    if tags:
        _check_tag_count(len(tags), f"{TAG_HEADER_PREFIX}*")
        for key, value in tags.items():
            _check_tag(key, value, TAG_HEADER_PREFIX + key)
    return tags


def _check_stream_options(options: Any) -> None:
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    _opt(options, "include_usage", bool, "stream_options", "a boolean")


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise _type_error("metadata", "an object", metadata)
    _check_tag_count(len(metadata), "metadata")
    for key, value in metadata.items():
        _check_tag(key, value, f"metadata.{key}")


# Optional top-level fields the pipeline reads, by name: only the fields a body has are looked at (null = absent).
_COMMON: dict[str, Callable[[Any], None]] = {
    "stream": _type_field("stream", bool, "a boolean"),
    "stream_options": _check_stream_options,
    "metadata": _check_metadata,
    "user": _type_field("user", str, "a string"),
    "max_tokens": _int_field("max_tokens"),
    "max_completion_tokens": _int_field("max_completion_tokens"),
    "n": _int_field("n", maximum=MAX_N),
    "temperature": _number_field("temperature", 0.0, 2.0),
    "top_p": _number_field("top_p", 0.0, 1.0),
}


def _check_fields(body: dict[str, Any], checks: dict[str, Callable[[Any], None]], required: str) -> Any:
    """The model, the endpoint's ``required`` field (returned) and every optional field in ``checks``."""
    model = body.get("model")
    if model is None:
        raise bad_request("'model' is required (use 'auto' to let tiergate choose)", param="model",
                          code="invalid_request.missing_field")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    value = body.get(required)
    if value is None:
        raise bad_request(f"'{required}' is required", param=required, code="invalid_request.missing_field")
    if len(body) > 2:  # else the body is model and the required field: nothing optional to look at
        for key, field in body.items():
            check = checks.get(key)
            if check is not None and field is not None:
                check(field)
    return value


def _check_parts(parts: list[Any], where: str) -> None:
    for j, part in enumerate(parts):  # paths are formatted only for an error: this runs for every part of every turn
        if not isinstance(part, dict):
            raise _type_error(f"{where}[{j}]", "a content part object", part)
        kind = part.get("type")
        spec = _PARTS.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise bad_request(f"'{where}[{j}].type' must be one of {sorted(_PARTS)}, got {shown(kind)}",
                              param=f"{where}[{j}].type")
        key, allowed = spec
        value = part.get(key)
        if not isinstance(value, allowed):
            raise bad_request(f"'{where}[{j}].{key}' is required for a {kind!r} part and must be "
                              f"{'a string' if allowed is str else 'an object'}", param=f"{where}[{j}].{key}")
        if kind == "image_url" and isinstance(value, dict):
            if not isinstance(value.get("url"), str):
                raise bad_request(f"'{where}[{j}].image_url.url' must be a string", param=f"{where}[{j}].image_url.url")
            _opt(value, "detail", str, f"{where}[{j}].image_url", "a string")


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
        if not isinstance(call, dict):
            raise _type_error(f"{where}[{j}]", "an object", call)
        if not isinstance(call.get("id"), str):
            raise bad_request(f"'{where}[{j}].id' must be a string", param=f"{where}[{j}].id")
        kind = call.get("type", "function")
        if kind not in _TOOL_TYPES:
            raise bad_request(f"'{where}[{j}].type' must be one of {list(_TOOL_TYPES)}, got {shown(kind)}",
                              param=f"{where}[{j}].type")
        fields = ("name", "arguments") if kind == "function" else ("name", "input")
        _check_function(call.get(kind), f"{where}[{j}].{kind}", fields)


def _check_message(message: dict[str, Any], role: str, content: Any, where: str) -> None:
    if isinstance(content, list):
        _check_parts(content, f"{where}.content")
    elif content is None and role != "assistant":
        raise bad_request(f"'{where}.content' is required for role {role!r}", param=f"{where}.content")
    elif content is not None and not isinstance(content, str):
        raise _type_error(f"{where}.content", "a string or an array of content parts", content)
    _opt(message, "name", str, where, "a string")
    _opt(message, "tool_call_id", str, where, "a string")
    calls = message.get("tool_calls")
    if calls is not None:
        _check_tool_calls(calls, f"{where}.tool_calls")
    call = message.get("function_call")
    if call is not None:
        _check_function(call, f"{where}.function_call", ("name", "arguments"))


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise bad_request("'messages' must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"'messages[{i}].role' must be one of {sorted(ROLES)}, got {shown(role)}",
                              param=f"messages[{i}].role")
        content = message.get("content")
        if type(content) is not str or len(message) > 2:  # else a plain text turn: nothing more to check
            _check_message(message, role, content, f"messages[{i}]")


def _check_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise _type_error("tools", "an array", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _type_error(f"tools[{i}]", "an object", tool)
        kind = tool.get("type", "function")
        if kind not in _TOOL_TYPES:
            raise bad_request(f"'tools[{i}].type' must be one of {list(_TOOL_TYPES)}, got {shown(kind)}",
                              param=f"tools[{i}].type")
        fn = tool.get(kind)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            _check_function(fn, f"tools[{i}].{kind}", ("name",))  # raises, naming what is wrong
        if kind == "function" and not isinstance(fn.get("parameters", {}), (dict, type(None))):
            raise _type_error(f"tools[{i}].function.parameters", "an object", fn["parameters"])


def _check_functions(functions: Any) -> None:
    if not isinstance(functions, list):
        raise _type_error("functions", "an array", functions)
    for i, fn in enumerate(functions):
        _check_function(fn, f"functions[{i}]", ("name",))


def _check_response_format(fmt: Any) -> None:
    if not isinstance(fmt, dict):
        raise _type_error("response_format", "an object", fmt)
    if not isinstance(fmt.get("type"), str):
        raise bad_request("'response_format.type' must be a string", param="response_format.type")


_CHAT = {
    **_COMMON,
    "tools": _check_tools,
    "functions": _check_functions,
    "tool_choice": _type_field("tool_choice", (str, dict), "a string or an object"),
    "response_format": _check_response_format,
}
_COMPLETION = {**_COMMON, "best_of": _int_field("best_of", maximum=MAX_BEST_OF)}


def check_chat(body: dict[str, Any]) -> None:
    _check_messages(_check_fields(body, _CHAT, "messages"))


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
                              param=f"{field}[{i}]", code="invalid_request.invalid_type")
        if kind is int and item < 0:
            raise bad_request(f"'{field}[{i}]' must be a token id >= 0, got {item}", param=f"{field}[{i}]")


def _token_ids(items: list[Any]) -> bool:
    return all(type(t) is int and t >= 0 for t in items)


def check_completion(body: dict[str, Any]) -> None:
    _check_token_input(_check_fields(body, _COMPLETION, "prompt"), "prompt")


def check_embeddings(body: dict[str, Any]) -> None:
    _check_token_input(_check_fields(body, _COMMON, "input"), "input")
