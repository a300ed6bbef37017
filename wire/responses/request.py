"""A Responses API request checked at the edge and mapped to the pipeline's canonical chat-completions body.

Every field the Responses API defines is known here: the ones chat completions can express are mapped
(``instructions`` -> a system message, items -> messages, ``text.format`` -> ``response_format``,
``max_output_tokens`` -> ``max_tokens``, ``reasoning.effort`` -> ``reasoning_effort``, ...), the ones only a
deployment speaking the Responses API natively can honour (hosted tools such as ``web_search``, stored prompts)
are collected in ``native_only``, and a field the API does not define, or a value of the wrong type, is a 400
naming it. ``background`` and ``conversation`` are refused outright: both need state on the provider's side that a
gateway routing each turn anew cannot keep (``previous_response_id`` is the gateway's conversation state).

Custom (freeform) tools, which Codex CLI sends for ``apply_patch``, are translated too: each becomes a function
tool taking one string, ``input`` (its grammar in the description), and a call of it comes back as a
``custom_tool_call``, so they work on any chat deployment. ``namespace`` tools (Codex CLI's sub-agent tools) are
flattened to one chat function per member; ``wire.responses.tool_names`` holds the one table both directions use.

Hosted tools: routing picks the deployment after this step, so a request that needs a native deployment is
accepted only when every deployment its team may be routed to speaks the Responses API (``serves_natively``).
Otherwise a translated call would silently drop the tool; a clear 400 up front is better than an answer that
ignored what was asked, unless the team's policy says to drop them (``without_hosted_tools``: the response says
which were dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from pipeline.errors import ErrorCode, TiergateError
from router.policy import Policy
from wire.responses.tool_names import NO_TOOLS, ToolNameClash, ToolNames

# Chat message roles an input message may have (Responses has no "tool" role: tool results are items).
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})
# Input item types a translated request can carry; hosted tool calls replayed by the client are native-only.
_HOSTED_ITEMS = frozenset({
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "image_generation_call",
    "code_interpreter_call", "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "mcp_call", "compaction",
    "tool_search_call", "tool_search_output",
})
# Top-level fields that only a deployment speaking the Responses API natively can honour.
_NATIVE_ONLY = ("prompt", "moderation", "context_management", "image", "access_programs", "prompt_cache_options",
                "background_options")
# Passed through to chat completions under the same name (OpenAI's chat API has each of them).
_SAME_NAME = ("user", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
              "top_logprobs")


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A checked request. ``body`` is the client's own; ``input_items`` this turn's input as Responses items (a
    string input becomes one user message), which is what a stored conversation keeps."""

    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    previous_response_id: str | None
    store: bool
    stream: bool
    native_only: tuple[str, ...]  # params (e.g. "tools[1]") a translated call cannot honour
    names: ToolNames = NO_TOOLS  # the tools' chat function names, both ways

    @property
    def custom_tools(self) -> frozenset[str]:
        """Chat names of custom tools: their calls are custom_tool_call items."""
        return self.names.custom


def _error(message: str, param: str | None, code: ErrorCode = "invalid_request.invalid_value") -> TiergateError:
    return TiergateError(code, message, param=param)


def _type_error(param: str, expected: str, value: Any) -> TiergateError:
    return _error(f"'{param}' must be {expected}, got {type(value).__name__}", param, "invalid_request.invalid_type")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _str(obj: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _error(f"'{where}.{key}' is required", f"{where}.{key}", "invalid_request.missing_field")
        return None
    if not isinstance(value, str):
        raise _type_error(f"{where}.{key}", "a string", value)
    return value


def _number(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(name, "a number", value)
        if not lo <= value <= hi:
            raise _error(f"'{name}' must be within [{lo}, {hi}], got {value}", name)
    return check


def _integer(lo: int) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name, "an integer", value)
        if value < lo:
            raise _error(f"'{name}' must be >= {lo}, got {value}", name)
    return check


def _of(kind: type | tuple[type, ...], expected: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) and kind is not bool:
            raise _type_error(name, expected, value)
        if not isinstance(value, kind):
            raise _type_error(name, expected, value)
    return check


def _check_reasoning(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _type_error(name, "an object", value)
    _str(value, "effort", name)
    _str(value, "summary", name)
    _str(value, "generate_summary", name)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _type_error(name, "an object", value)
    _str(value, "verbosity", name)
    fmt = value.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _type_error(f"{name}.format", "an object", fmt)
    kind = _str(fmt, "type", f"{name}.format", required=True)
    if kind not in ("text", "json_object", "json_schema"):
        raise _error(f"'{name}.format.type' must be one of ['json_object', 'json_schema', 'text'], got "
                     f"{_shown(kind)}", f"{name}.format.type")
    if kind == "json_schema":
        _str(fmt, "name", f"{name}.format", required=True)
        _str(fmt, "description", f"{name}.format")
        if not isinstance(fmt.get("schema"), dict):
            raise _type_error(f"{name}.format.schema", "an object", fmt.get("schema"))
        if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
            raise _type_error(f"{name}.format.strict", "a boolean", fmt["strict"])


def _check_metadata(name: str, value: Any) -> None:
    # Keys and values become ledger tags: their sizes are checked with every other tag (proxy.body.check_chat).
    if not isinstance(value, dict):
        raise _type_error(name, "an object", value)
    for key, item in value.items():
        if not isinstance(item, str):
            raise _type_error(f"{name}.{key}", "a string", item)


def _refused(why: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in (False, None):
            raise _error(f"'{name}' is not supported by tiergate: {why}", name)
    return check


def _anything(name: str, value: Any) -> None:
    """Known to the Responses API, checked where it is used (or passed through to a native deployment)."""


# Every top-level field the Responses API defines (openai SDK 3.x ``ResponseCreateParams``): its check. Fields the
# proxy maps are checked for type here; native-only ones are the native deployment's to check.
_FIELDS: dict[str, Callable[[str, Any], None]] = {
    "model": _anything,  # checked first: required
    "input": _anything,  # checked item by item
    "instructions": _of(str, "a string"),
    "previous_response_id": _of(str, "a string"),
    "store": _of(bool, "a boolean"),
    "stream": _of(bool, "a boolean"),
    "tools": _of(list, "an array"),
    "tool_choice": _of((str, dict), "a string or an object"),
    "parallel_tool_calls": _of(bool, "a boolean"),
    "max_output_tokens": _integer(1),
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "top_logprobs": _integer(0),
    "reasoning": _check_reasoning,
    "text": _check_text,
    "metadata": _check_metadata,
    "user": _of(str, "a string"),
    "safety_identifier": _of(str, "a string"),
    "prompt_cache_key": _of(str, "a string"),
    "prompt_cache_retention": _of(str, "a string"),
    "service_tier": _of(str, "a string"),
    # Checked, and not sent to chat completions: ``include`` asks for extra output (logprobs, encrypted reasoning)
    # a translated answer does not have; ``truncation`` is the team's trimming policy's job; ``max_tool_calls``
    # limits hosted tool calls, which a translated request has none of; ``stream_options`` only obfuscates.
    "truncation": _of(str, "a string"),
    "include": _of(list, "an array"),
    "max_tool_calls": _integer(1),
    "stream_options": _of(dict, "an object"),
    # Codex CLI's per-turn ids (turn_id, thread ids): for the provider's logs, nothing for a chat completion
    "client_metadata": _of(dict, "an object"),
    "background": _refused("background responses are polled from the provider that ran them; tiergate routes each "
                           "request anew (use stream=true for long answers)"),
    "conversation": _refused("conversation objects live at the provider; use previous_response_id, which tiergate "
                             "keeps for every backend"),
    **{name: _anything for name in _NATIVE_ONLY},
}


def parse(body: dict[str, Any]) -> ResponsesRequest:
    """Check ``body`` (a JSON object): a 400 naming the first field that is unknown, of the wrong type or
    malformed."""
    for key, value in body.items():
        check = _FIELDS.get(key)
        if check is None:
            raise _error(f"unknown parameter: '{key}' is not a Responses API parameter", key)
        if value is not None:
            check(key, value)
    model = body.get("model")
    if model is None:
        raise _error("'model' is required (use 'auto' to let tiergate choose)", "model",
                     "invalid_request.missing_field")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string", model)
    native_only = [name for name in _NATIVE_ONLY if body.get(name) is not None]
    hosted, names = _check_tools(body.get("tools") or [])
    native_only += hosted
    native_only += _check_tool_choice(body.get("tool_choice"))
    items, hosted_items = _input_items(body.get("input"), body.get("previous_response_id") is not None)
    native_only += hosted_items
    return ResponsesRequest(
        body=body,
        input_items=items,
        previous_response_id=body.get("previous_response_id"),
        store=body.get("store") is not False,  # OpenAI's default: stored
        stream=body.get("stream") is True,
        native_only=tuple(native_only),
        names=names,
    )


def _check_tools(tools: list[Any]) -> tuple[list[str], ToolNames]:
    """Function, custom and namespace tools are checked; any other tool type (web_search, file_search, mcp, ...) is
    native-only. Returns (the native-only params, the tools' chat names)."""
    hosted: list[str] = []
    entries: list[tuple[str | None, str, bool]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _type_error(where, "an object", tool)
        kind = _str(tool, "type", where, required=True)
        if kind == "namespace":
            namespace = str(_str(tool, "name", where, required=True))
            _str(tool, "description", where)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise _type_error(f"{where}.tools", "an array", members)
            for j, member in enumerate(members):
                member_where = f"{where}.tools[{j}]"
                if not isinstance(member, dict):
                    raise _type_error(member_where, "an object", member)
                member_kind = _str(member, "type", member_where, required=True)
                if member_kind not in ("function", "custom"):
                    raise _error(f"'{member_where}.type' must be 'function' or 'custom' (a namespace groups "
                                 f"function and custom tools), got {_shown(member_kind)}", f"{member_where}.type")
                entries.append((namespace, _check_tool(member, str(member_kind), member_where),
                                member_kind == "custom"))
        elif kind in ("function", "custom"):
            entries.append((None, _check_tool(tool, str(kind), where), kind == "custom"))
        else:
            hosted.append(where)
    try:
        return hosted, ToolNames.of(entries)
    except ToolNameClash as exc:
        raise _error(f"'tools': {exc}; rename one", "tools") from None


def _check_tool(tool: dict[str, Any], kind: str, where: str) -> str:
    """A function or custom tool's fields; its name."""
    name = str(_str(tool, "name", where, required=True))
    _str(tool, "description", where)
    if kind == "custom":
        fmt = tool.get("format")
        if fmt is not None and not isinstance(fmt, dict):
            raise _type_error(f"{where}.format", "an object", fmt)
        return name
    if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
        raise _type_error(f"{where}.parameters", "an object", tool["parameters"])
    if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
        raise _type_error(f"{where}.strict", "a boolean", tool["strict"])
    return name


def _check_tool_choice(choice: Any) -> list[str]:
    if choice is None:
        return []
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _error(f"'tool_choice' must be one of ['auto', 'none', 'required'] or an object, got "
                         f"{_shown(choice)}", "tool_choice")
        return []
    kind = _str(choice, "type", "tool_choice", required=True)
    if kind in ("function", "custom"):
        _str(choice, "name", "tool_choice", required=True)
        return []
    if kind == "allowed_tools":
        mode = _str(choice, "mode", "tool_choice", required=True)
        if mode not in ("auto", "required"):
            raise _error(f"'tool_choice.mode' must be 'auto' or 'required', got {_shown(mode)}", "tool_choice.mode")
        tools = choice.get("tools")
        if not isinstance(tools, list):
            raise _type_error("tool_choice.tools", "an array", tools)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _type_error(f"tool_choice.tools[{i}]", "an object", tool)
            if tool.get("type") not in ("function", "custom"):
                return ["tool_choice"]
            _str(tool, "name", f"tool_choice.tools[{i}]", required=True)
        return []
    return ["tool_choice"]  # a hosted tool, mcp, shell, apply_patch


def _input_items(value: Any, continued: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """This turn's input as Responses items, and the items a translated call cannot carry."""
    if value is None:
        if continued:
            return [], []  # continuing a conversation with nothing new is allowed (OpenAI answers again)
        raise _error("'input' is required", "input", "invalid_request.missing_field")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}], []
    if not isinstance(value, list):
        raise _type_error("input", "a string or an array of input items", value)
    if not value and not continued:
        raise _error("'input' must contain at least one item", "input")
    items: list[dict[str, Any]] = []
    hosted: list[str] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _type_error(where, "an object", item)
        kind = item.get("type", "message")
        if kind == "message":
            items.append(_message_item(item, where))
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                _str(item, key, where, required=True)
            _str(item, "namespace", where)
            items.append(item)
        elif kind == "custom_tool_call":
            for key in ("call_id", "name", "input"):
                _str(item, key, where, required=True)
            _str(item, "namespace", where)
            items.append(item)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            # an output no call of the model's produced names its tool instead (Codex CLI's goal objective)
            if _str(item, "call_id", where) is None and _str(item, "name", where) is None:
                raise _error(f"'{where}.call_id' is required (or 'name', for an output no call of the model's "
                             "produced)", f"{where}.call_id", "invalid_request.missing_field")
            _str(item, "namespace", where)
            _check_tool_output(item.get("output"), f"{where}.output")
            items.append(item)
        elif kind == "reasoning":
            items.append(item)  # a reasoning model's own item replayed: kept for native deployments
        elif isinstance(kind, str) and (kind in _HOSTED_ITEMS or kind == "item_reference"):
            hosted.append(where)
            items.append(item)
        else:
            raise _error(f"'{where}.type' {_shown(kind)} is not a Responses API input item type", f"{where}.type")
    return items, hosted


def _message_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A message item with its content as parts (an easy message's string becomes one text part)."""
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _error(f"'{where}.role' must be one of {sorted(_ROLES)}, got {_shown(role)}", f"{where}.role")
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        return {**item, "type": "message", "content": [{"type": text_type, "text": content}]}
    if not isinstance(content, list):
        raise _type_error(f"{where}.content", "a string or an array of content parts", content)
    for j, part in enumerate(content):
        _check_part(part, f"{where}.content[{j}]")
    return {**item, "type": "message"}


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise _type_error(where, "a content part object", part)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise _type_error(f"{where}.type", "a string", kind)
    if kind in _TEXT_PARTS:
        _str(part, "text", where, required=True)
    elif kind == "refusal":
        _str(part, "refusal", where, required=True)
    elif kind == "input_image":
        url, file_id = _str(part, "image_url", where), _str(part, "file_id", where)
        if url is None and file_id is None:
            raise _error(f"'{where}.image_url' is required for an 'input_image' part", f"{where}.image_url",
                         "invalid_request.missing_field")
        if url is None:
            raise _error(f"'{where}.file_id': tiergate has no Files API; send the image as 'image_url' (a URL or "
                         "a data: URL)", f"{where}.file_id")
        _str(part, "detail", where)
    elif kind == "input_file":
        for key in ("file_data", "file_id", "file_url", "filename"):
            _str(part, key, where)
    else:
        raise _error(f"'{where}.type' must be one of ['input_file', 'input_image', 'input_text', 'output_text', "
                     f"'refusal'], got {_shown(kind)}", f"{where}.type")


def _check_tool_output(output: Any, where: str) -> None:
    if isinstance(output, str):
        return
    if not isinstance(output, list):
        raise _type_error(where, "a string or an array of content parts", output)
    for j, part in enumerate(output):
        _check_part(part, f"{where}[{j}]")


# ---- routing's constraint --------------------------------------------------------------------------------------

def serves_natively(policy: Policy, team: str, api: str) -> bool:
    """Whether every deployment ``team`` may be routed to (its tiers floor to ceiling, which hold its pins, its
    fallbacks and its budget floor) speaks ``api`` natively: only then may a request that needs it be accepted
    before routing has chosen."""
    spec = policy.teams[team]
    return all(api in dep.native_apis for tier in policy.tiers[spec.floor:spec.ceiling + 1]
               for dep in tier.deployments)


def require_translatable(request: ResponsesRequest, team: str) -> None:
    """400 naming the first param only a native Responses deployment can honour."""
    if request.native_only:
        param = request.native_only[0]
        raise _error(f"'{param}' needs a deployment that speaks the Responses API natively (hosted tools, stored "
                     f"prompts and the like cannot be translated to chat completions), and team {team!r} may be "
                     "routed to deployments that do not; use function tools, or ask an admin to restrict the team "
                     "to Responses-native deployments (apis: [responses])", param)


def without_hosted_tools(request: ResponsesRequest) -> tuple[ResponsesRequest, tuple[str, ...]]:
    """The request without its hosted tools (a team whose policy is ``responses.hosted_tools: drop``), and the
    dropped tools' types, for the response to say what the model was not offered. Only offered tools are dropped:
    a hosted ``tool_choice``, replayed hosted calls or a stored prompt are still refused (``require_translatable``),
    since leaving those out would change what was asked, not only what was offered."""
    dropped = {param for param in request.native_only if param.startswith("tools[")}
    if not dropped:
        return request, ()
    tools = request.body["tools"]
    kept = [tool for i, tool in enumerate(tools) if f"tools[{i}]" not in dropped]
    kinds = tuple(dict.fromkeys(str(tool["type"]) for i, tool in enumerate(tools) if f"tools[{i}]" in dropped))
    return replace(request, body={**request.body, "tools": kept},
                   native_only=tuple(p for p in request.native_only if p not in dropped)), kinds


# ---- the canonical chat body -----------------------------------------------------------------------------------

def conversation(history: list[dict[str, Any]], request: ResponsesRequest) -> list[dict[str, Any]]:
    """The items the model sees this turn: the stored conversation, then this turn's input."""
    return [*history, *request.input_items]


def native_body(request: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The client's body for a deployment speaking the Responses API natively: the conversation expanded in place of
    ``previous_response_id`` (which the provider never saw: the gateway keeps the state)."""
    body = {k: v for k, v in request.body.items() if k != "previous_response_id"}
    body["input"] = items
    return body


def chat_body(request: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The canonical chat-completions body. Native-only parts are left out: the request reaches a deployment that
    cannot honour them only when none was asked for (``require_translatable``), and a native one gets ``native``."""
    src = request.body
    messages: list[dict[str, Any]] = []
    if src.get("instructions"):  # this turn's only: as at OpenAI, a continued conversation does not inherit them
        messages.append({"role": "system", "content": src["instructions"]})
    messages += to_messages(items, request.names)
    chat: dict[str, Any] = {"model": src["model"], "messages": messages}
    tools = _chat_tools(src.get("tools") or (), request.names)
    if tools:
        chat["tools"] = tools
        if src.get("parallel_tool_calls") is not None:  # chat refuses it without tools
            chat["parallel_tool_calls"] = src["parallel_tool_calls"]
        choice = _chat_tool_choice(src.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    elif src.get("tool_choice") == "none":
        chat["tool_choice"] = "none"
    for name in ("temperature", "top_p", "metadata", *_SAME_NAME):
        if src.get(name) is not None:
            chat[name] = src[name]
    if src.get("top_logprobs"):
        chat["logprobs"] = True
    if src.get("max_output_tokens") is not None:
        chat["max_tokens"] = src["max_output_tokens"]  # the team's max_tokens policy applies to it in the pipeline
    effort = (src.get("reasoning") or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    text = src.get("text") or {}
    fmt = _response_format(text.get("format"))
    if fmt is not None:
        chat["response_format"] = fmt
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # response.completed carries usage
    return chat


def _chat_tools(tools: Any, names: ToolNames) -> list[dict[str, Any]]:
    """The function, custom and namespaced tools as chat functions (hosted ones are native-only)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        if tool.get("type") in ("function", "custom"):
            out.append(_chat_tool(tool, names.chat(tool["name"])))
        elif tool.get("type") == "namespace":
            about = f"(One of the {tool['name']} tools: {tool['description']})" if tool.get("description") else ""
            for member in tool["tools"]:
                out.append(_chat_tool(member, names.chat(member["name"], tool["name"]), about))
    return out


def _chat_tool(tool: dict[str, Any], name: str, about: str = "") -> dict[str, Any]:
    """One chat function named ``name``; ``about``: what its namespace says, which the flat name cannot."""
    if tool["type"] == "custom":
        description = _custom_description(tool)
        return {"type": "function", "function": {"name": name, "description": f"{description}\n\n{about}".strip(),
                                                 "parameters": CUSTOM_PARAMETERS}}
    function = {k: tool[k] for k in ("description", "parameters", "strict") if tool.get(k) is not None}
    if about:
        function["description"] = f"{function.get('description') or ''}\n\n{about}".strip()
    return {"type": "function", "function": {"name": name, **function}}


# A custom tool as a function: its freeform input is one string argument.
CUSTOM_PARAMETERS = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"],
                     "additionalProperties": False}


def _custom_description(tool: dict[str, Any]) -> str:
    """The custom tool's description, and its grammar: what the model needs to write ``input`` well."""
    text = tool.get("description") or ""
    fmt = tool.get("format") or {}
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        text += (f"\n\nPass the tool's whole input as the string argument 'input'; it must match this "
                 f"{fmt.get('syntax') or ''} grammar:\n{fmt['definition']}")
    return text.strip() or "Pass the tool's whole input as the string argument 'input'."


def _chat_tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice["type"] in ("function", "custom"):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice["type"] == "allowed_tools":
        tools = [{"type": "function", "function": {"name": t["name"]}} for t in choice["tools"]]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}
    return None  # a hosted tool's choice: native-only


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": schema}


def to_messages(items: list[dict[str, Any]], names: ToolNames = NO_TOOLS) -> list[dict[str, Any]]:
    """Responses items as chat messages. Consecutive function calls join one assistant message (with the text the
    model said before them), as chat completions put them, named as ``names`` names their tools; items chat cannot
    carry (reasoning, hosted tool calls a native deployment made earlier in the conversation) are left out, their
    results being in the messages."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_chat_message(item))
        elif kind in ("function_call", "custom_tool_call"):
            arguments = (item["arguments"] if kind == "function_call"
                         else orjson.dumps({"input": item["input"]}).decode())
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": names.chat(item["name"], item.get("namespace")), "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item["output"]
            content = output if isinstance(output, str) else _chat_content(output)
            if item.get("call_id") is None:
                messages.append(_standalone_output(item, content))
            else:
                messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
    return messages


def _standalone_output(item: dict[str, Any], content: str | list[dict[str, Any]]) -> dict[str, Any]:
    """A tool output no call of the model's produced (the client steering the turn: Codex CLI sends its goal's
    objective so). Chat's tool messages must answer a call, so it is a user message saying which tool spoke."""
    tool = ".".join(filter(None, (item.get("namespace"), item.get("name"))))
    label = f"[output of the tool {tool}]"
    if isinstance(content, str):
        return {"role": "user", "content": f"{label}\n{content}"}
    return {"role": "user", "content": [{"type": "text", "text": label}, *content]}


def _chat_message(item: dict[str, Any]) -> dict[str, Any]:
    role = item["role"]
    parts = item["content"]
    if role == "assistant":  # text only: chat servers differ on parts in assistant turns, none on a string
        text = "".join(p.get("text") or p.get("refusal") or "" for p in parts)
        return {"role": "assistant", "content": text}
    return {"role": role, "content": _chat_content(parts)}


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a string (what every chat server accepts); otherwise chat's content parts."""
    if len(parts) == 1 and parts[0].get("type") in _TEXT_PARTS:
        return str(parts[0]["text"])
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            out.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image":
            image = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            out.append({"type": "file", "file": {k: part[k] for k in ("file_data", "file_id", "filename")
                                                 if part.get(k) is not None}})
    return out
