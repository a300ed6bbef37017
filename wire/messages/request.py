"""An Anthropic Messages request (``POST /v1/messages``), checked and mapped to the pipeline's canonical chat body.

Checked: every field the mapping reads, by type and shape, so a malformed body is a 400 naming its path the way
Anthropic's API does (``max_tokens: Field required``, ``messages.1.content.0.type: ...``), never a 500 later. Fields
only an Anthropic deployment understands (``thinking``, ``top_k``, ``cache_control``, server tools, ``container``,
...) are not translated: the client's body stays whole in ``Request.native`` for Anthropic-native deployments, and
OpenAI-compatible ones get the nearest chat completions request:

- ``system`` (a string or text blocks) -> one leading system message; Claude Code's attribution line
  (``router.prefix.ATTRIBUTION_PREFIX``) is dropped: it is addressed to Anthropic's billing and, differing on every
  request, would defeat the upstream's prefix cache;
- user ``text`` / ``image`` / ``document`` blocks -> content parts; ``tool_result`` blocks -> ``tool`` messages,
  placed before the user's other parts as chat completions requires (their images follow in the user message);
- assistant ``text`` + ``tool_use`` blocks -> content + ``tool_calls`` (input as JSON arguments); ``thinking``
  blocks and server tools' calls and results (run at Anthropic in an earlier, native turn) are dropped: chat
  completions has no field for them;
- ``tools`` -> functions, ``tool_choice`` auto/any/tool/none -> auto/required/function/none,
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``, ``stop_sequences`` -> ``stop``,
  ``metadata.user_id`` -> ``user``, ``max_tokens`` -> ``max_tokens`` (the team's caps apply in the pipeline), and a
  stream asks for the usage chunk (``stream_options.include_usage``) so its events carry exact usage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from pipeline.errors import ErrorCode, TiergateError
from router.prefix import without_attribution

# "system" inside messages: the mid-conversation-system beta Claude Code sends (agent and skill listings after the
# first user turn); translated to a system message at the same place.
_ROLES = ("user", "assistant", "system")
# OpenAI's bound on ``user``; Claude Code's metadata.user_id is longer, so a longer one is sent as its hash.
_MAX_USER_CHARS = 64


def _bad(path: str, what: str, code: ErrorCode = "invalid_request.invalid_value") -> TiergateError:
    return TiergateError(code, f"{path}: {what}", param=path)


def _expect(value: Any, kind: type | tuple[type, ...], path: str, expected: str) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise _bad(path, f"Input should be {expected}, got {type(value).__name__}", "invalid_request.invalid_type")
    return value


def _required(body: dict[str, Any], key: str, path: str) -> Any:
    value = body.get(key)
    if value is None:
        raise _bad(path, "Field required", "invalid_request.missing_field")
    return value


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    value = body.get(key)
    if value is not None:
        _expect(value, (int, float), key, "a number")
        if not lo <= value <= hi:
            raise _bad(key, f"Input should be between {lo} and {hi}, got {value}")


def _blocks(content: list[Any], path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Each content block of ``content`` as (its path, its type, the block), checked to be an object."""
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        _expect(block, dict, where, "an object")
        yield where, block.get("type"), block


def _text(block: dict[str, Any], path: str) -> str:
    return _expect(block.get("text"), str, f"{path}.text", "a valid string")


def _image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = _expect(block.get("source"), dict, f"{path}.source", "an object")
    kind = source.get("type")
    if kind == "base64":
        media = _expect(source.get("media_type"), str, f"{path}.source.media_type", "a valid string")
        data = _expect(source.get("data"), str, f"{path}.source.data", "a valid string")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": _expect(source.get("url"), str, f"{path}.source.url",
                                                                       "a valid string")}}
    raise _bad(f"{path}.source.type", f"image sources 'base64' and 'url' are supported, got {kind!r}")


def _document(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = _expect(block.get("source"), dict, f"{path}.source", "an object")
    kind = source.get("type")
    data = source.get("data")
    if kind == "text":
        return {"type": "text", "text": _expect(data, str, f"{path}.source.data", "a valid string")}
    if kind == "base64":
        media = _expect(source.get("media_type"), str, f"{path}.source.media_type", "a valid string")
        _expect(data, str, f"{path}.source.data", "a valid string")
        title = block.get("title")
        return {"type": "file", "file": {"file_data": f"data:{media};base64,{data}",
                                         "filename": title if isinstance(title, str) and title else "document.pdf"}}
    raise _bad(f"{path}.source.type", f"document sources 'base64' and 'text' are supported, got {kind!r}")


def _tool_result(block: dict[str, Any], path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``tool`` message for a tool_result block, and the images it returned (for the following user turn:
    a chat completions tool message carries text only)."""
    call_id = _expect(block.get("tool_use_id"), str, f"{path}.tool_use_id", "a valid string")
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for where, kind, part in _blocks(content, f"{path}.content"):
            if kind == "text":
                texts.append(_text(part, where))
            elif kind == "image":
                images.append(_image(part, where))
            elif kind == "document":
                texts.append(str(_document(part, where).get("text", "")))
            else:
                raise _bad(f"{where}.type", f"tool_result content may hold 'text', 'image' and 'document' blocks, "
                                            f"got {kind!r}")
    elif content is not None:
        raise _bad(f"{path}.content", "Input should be a valid string or a list of blocks",
                   "invalid_request.invalid_type")
    _expect(block.get("is_error", False), bool, f"{path}.is_error", "a valid boolean")
    return {"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}, images


def _user(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for where, kind, block in _blocks(content, path):
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "document":
            parts.append(_document(block, where))
        elif kind == "tool_result":
            message, images = _tool_result(block, where)
            tools.append(message)
            parts.extend(images)
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{where}.type", "user content blocks 'text', 'image', 'document' and 'tool_result' are "
                                        f"supported, got {kind!r}")
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _ran_at_anthropic(kind: Any) -> bool:
    """A server tool's call or result in an earlier answer (``server_tool_use``, ``web_search_tool_result``,
    ``mcp_tool_use``, ...): Anthropic ran it, and the answer's text already says what came of it, so a
    translated turn leaves it out rather than refusing a conversation a native deployment began."""
    return isinstance(kind, str) and kind.endswith(("_tool_result", "_tool_use"))  # not tool_use, tool_result


def _assistant(content: Any, path: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for where, kind, block in _blocks(content, path):
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            call_id = _expect(block.get("id"), str, f"{where}.id", "a valid string")
            name = _expect(block.get("name"), str, f"{where}.name", "a valid string")
            arguments = _expect(block.get("input"), dict, f"{where}.input", "an object")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}})
        elif kind in ("thinking", "redacted_thinking") or _ran_at_anthropic(kind):
            continue
        else:
            raise _bad(f"{where}.type", "assistant content blocks 'text', 'tool_use' and 'thinking' are supported, "
                                        f"got {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(messages: Any) -> list[dict[str, Any]]:
    _expect(messages, list, "messages", "a valid list")
    if not messages:
        raise _bad("messages", "List should have at least 1 item")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        _expect(message, dict, where, "an object")
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", f"Input should be 'user', 'assistant' or 'system', got {role!r}")
        content = _required(message, "content", f"{where}.content")
        if not isinstance(content, (str, list)):
            raise _bad(f"{where}.content", "Input should be a valid string or a list of content blocks",
                       "invalid_request.invalid_type")
        if not content:
            if role == "assistant" and i == len(messages) - 1:  # an empty prefill is allowed, and means nothing
                continue
            raise _bad(f"{where}.content", "messages must have non-empty content")
        if role == "user":
            out.extend(_user(content, f"{where}.content"))
        elif role == "system":
            text = _system(content, f"{where}.content")
            if text is not None:
                out.append({"role": "system", "content": text})
        else:
            out.append(_assistant(content, f"{where}.content"))
    if not any(m["role"] != "system" for m in out):
        raise _bad("messages", "the messages hold no user or assistant turn")
    return out


def _system(system: Any, path: str = "system") -> str | None:
    """The system prompt's text (or a mid-conversation system message's), without Claude Code's attribution line."""
    if isinstance(system, str):
        texts = [system]
    else:
        _expect(system, list, path, "a valid string or a list of text blocks")
        texts = []
        for where, kind, block in _blocks(system, path):
            if kind != "text":
                raise _bad(f"{where}.type", f"system blocks must be 'text', got {kind!r}")
            texts.append(_text(block, where))
    if texts:
        texts[0] = without_attribution(texts[0])
    text = "\n\n".join(t for t in texts if t)
    return text or None


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Client tools as functions. Server tools (``web_search_20250305``, ``bash_20250124``, ...) run at Anthropic:
    only a native deployment can serve them, so the chat body leaves them out."""
    _expect(tools, list, "tools", "a valid list")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        _expect(tool, dict, where, "an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            _expect(kind, str, f"{where}.type", "a valid string")
            continue
        function = {"name": _expect(tool.get("name"), str, f"{where}.name", "a valid string"),
                    "parameters": _expect(tool.get("input_schema"), dict, f"{where}.input_schema", "an object")}
        description = tool.get("description")
        if description is not None:
            function["description"] = _expect(description, str, f"{where}.description", "a valid string")
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    _expect(choice, dict, "tool_choice", "an object")
    kind = choice.get("type")
    if kind == "auto":
        mapped: Any = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool":
        mapped = {"type": "function",
                  "function": {"name": _expect(choice.get("name"), str, "tool_choice.name", "a valid string")}}
    else:
        raise _bad("tool_choice.type", f"Input should be 'auto', 'any', 'tool' or 'none', got {kind!r}")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None:
        _expect(parallel, bool, "tool_choice.disable_parallel_tool_use", "a valid boolean")
    if "tools" in chat:  # chat completions refuses tool settings without tools
        chat["tool_choice"] = mapped
        if parallel:
            chat["parallel_tool_calls"] = False


def _user_id(metadata: Any) -> str | None:
    _expect(metadata, dict, "metadata", "an object")
    user_id = metadata.get("user_id")
    if user_id is None:
        return None
    _expect(user_id, str, "metadata.user_id", "a valid string")
    if len(user_id) > _MAX_USER_CHARS:
        return hashlib.sha256(user_id.encode()).hexdigest()
    return user_id or None


def model_of(body: dict[str, Any]) -> str:
    model = _required(body, "model", "model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Input should be a non-empty string", "invalid_request.invalid_type")
    return model


def to_chat(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """The canonical chat body for a Messages request (``count_only``: a count_tokens request, which has no
    ``max_tokens`` and no sampling settings). Raises a ``TiergateError`` naming the first bad field."""
    chat: dict[str, Any] = {"model": model_of(body)}
    if not count_only:
        max_tokens = _required(body, "max_tokens", "max_tokens")
        _expect(max_tokens, int, "max_tokens", "a valid integer")
        if max_tokens < 1:
            raise _bad("max_tokens", f"Input should be greater than or equal to 1, got {max_tokens}")
        chat["max_tokens"] = max_tokens
    messages = _messages(_required(body, "messages", "messages"))
    system = body.get("system")
    prompt = _system(system) if system is not None else None
    chat["messages"] = [{"role": "system", "content": prompt}, *messages] if prompt else messages
    tools = body.get("tools")
    if tools is not None:
        functions = _tools(tools)
        if functions:
            chat["tools"] = functions
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    if count_only:
        return chat
    stop = body.get("stop_sequences")
    if stop is not None:
        _expect(stop, list, "stop_sequences", "a valid list")
        for k, item in enumerate(stop):
            _expect(item, str, f"stop_sequences.{k}", "a valid string")
        if stop:
            chat["stop"] = list(stop)
    _number(body, "temperature", 0.0, 1.0)
    _number(body, "top_p", 0.0, 1.0)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    top_k = body.get("top_k")
    if top_k is not None:  # native only: OpenAI's API refuses the parameter
        _expect(top_k, int, "top_k", "a valid integer")
    if body.get("metadata") is not None:
        user = _user_id(body["metadata"])
        if user is not None:
            chat["user"] = user
    stream = body.get("stream")
    if stream is not None:
        _expect(stream, bool, "stream", "a valid boolean")
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
    thinking = body.get("thinking")
    if thinking is not None:
        _expect(thinking, dict, "thinking", "an object")
    return chat


def native_body(body: dict[str, Any]) -> dict[str, Any]:
    """The client's body for an Anthropic-native deployment: as sent, less the unsigned ``thinking`` blocks a
    translated answer gave it (a chat server's reasoning, ``wire.messages.response``), which Anthropic would refuse
    as forged. Called on a body ``to_chat`` accepted; the body itself when there are none (the usual case)."""
    messages = body["messages"]
    if not any(_unsigned(block) for m in messages if m["role"] == "assistant" and isinstance(m["content"], list)
               for block in m["content"]):
        return body
    kept = [{**m, "content": [b for b in m["content"] if not _unsigned(b)]}
            if m["role"] == "assistant" and isinstance(m["content"], list) else m for m in messages]
    return {**body, "messages": [m for m in kept if m["content"]]}


def _unsigned(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")


def stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    """The request's stop sequences (checked by ``to_chat``): an answer that ended on one says which."""
    return tuple(body.get("stop_sequences") or ())
