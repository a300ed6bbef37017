"""Anthropic's Messages API (``POST /v1/messages``) in the simulator: the request as the chat engine's input (the
gateway's own translation, ``wire.messages``: one mapping of the format), and the answer rendered as a ``message``
or its event stream (``message_start`` ... ``message_stop``), with usage as Anthropic reports it: ``input_tokens``
*excludes* ``cache_read_input_tokens`` and ``cache_creation_input_tokens``.

Caching follows Anthropic's rules rather than OpenAI's: nothing is cached unless a block carries ``cache_control``;
the prompt up to the last breakpoint is written on first sight and read on repeat (``PrefixCache.breakpoints``).
The prompt is counted here in Anthropic's order (tools, system, messages), block by block, so breakpoints fall at
exact token positions.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator
from typing import Any

import orjson

from pipeline.errors import TiergateError
from simulator.engine import Choice, Engine, Generation
from simulator.errors import SimulatedError
from simulator.prefix_cache import PrefixCache
from simulator.text import groups
from text.tokens import encoding_for
from wire.messages.errors import anthropic_type
from wire.messages.request import to_chat as to_chat_body

MIN_CACHEABLE_TOKENS = 1024  # Anthropic's minimum for Sonnet and Opus (Haiku's is 2,048)
_FRAME = 0xFFFF0000  # block separators no tokenizer produces, as in the engine's prompt stream
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def to_chat(body: Any) -> dict[str, Any]:
    """The chat engine's input for a Messages request, through the gateway's own translation
    (``wire.messages.request``); raises ``SimulatedError`` (400, rendered in Anthropic's shape) for what the API
    would refuse."""
    if not isinstance(body, dict):
        raise SimulatedError(400, "Invalid request body: expected a JSON object.")
    try:
        return to_chat_body(body)
    except TiergateError as exc:
        raise SimulatedError(400, exc.message, param=exc.param) from None


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())


def _block_text(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text") or "")
    if kind == "thinking":
        return str(block.get("thinking") or "")
    if kind == "tool_use":
        return str(block.get("name") or "") + orjson.dumps(block.get("input") or {}).decode()
    if kind == "tool_result":
        return "".join(_block_text(b) for b in _blocks(block.get("content")))
    return ""  # images and documents: not counted by the simulator


def _prompt(body: dict[str, Any], model: str) -> tuple[array, list[int]]:
    """The prompt as token ids in Anthropic's caching order (tools, system, messages) and the length of the prompt
    at each ``cache_control`` breakpoint."""
    enc = encoding_for(model)
    tokens = array("I")
    ends: list[int] = []

    def add(text: str, block: dict[str, Any]) -> None:
        tokens.append(_FRAME)
        tokens.extend(enc.encode(text, disallowed_special=()))
        if isinstance(block.get("cache_control"), dict):
            ends.append(len(tokens))

    for tool in body.get("tools") or ():
        add(orjson.dumps({k: tool.get(k) for k in ("name", "description", "input_schema")}).decode(), tool)
    for block in _blocks(body.get("system")):
        add(_block_text(block), block)
    for message in body["messages"]:
        tokens.append(_FRAME + (1 if message["role"] == "user" else 2))
        for block in _blocks(message["content"]):
            add(_block_text(block), block)
    tokens.append(_FRAME + 2)  # the assistant turn the reply opens
    return tokens, ends


def generate(engine: Engine, cache: PrefixCache, body: dict[str, Any], chat: dict[str, Any]) -> Generation:
    """Answer a checked Messages request (``chat``: its ``to_chat``) with the chat engine; usage counted and cached
    Anthropic's way."""
    model = body["model"]
    gen = engine.chat(chat, auto_cache=False)
    tokens, ends = _prompt(body, model)
    read, written = cache.breakpoints(f"{model}\x00anthropic", tokens, ends, MIN_CACHEABLE_TOKENS)
    gen.api = "messages"
    gen.native = {"input_tokens": len(tokens) - read - written, "cache_read_input_tokens": read,
                  "cache_creation_input_tokens": written}
    return gen


def _id(prefix: str, seed: str) -> str:
    return prefix + hashlib.blake2b(seed.encode(), digest_size=12).hexdigest()


def _usage(gen: Generation, output_tokens: int) -> dict[str, Any]:
    return {**(gen.native or {}), "output_tokens": output_tokens, "service_tier": "standard"}


def _content(choice: Choice) -> dict[str, Any]:
    call = choice.tool_call
    if call is None:
        return {"type": "text", "text": "".join(choice.pieces)}
    return {"type": "tool_use", "id": _id("toolu_01", call["id"]), "name": call["function"]["name"],
            "input": orjson.loads(call["function"]["arguments"])}


def _message(gen: Generation, content: list[dict[str, Any]], stop_reason: str | None, output_tokens: int
             ) -> dict[str, Any]:
    return {"id": _id("msg_01", gen.id), "type": "message", "role": "assistant", "model": gen.model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": _usage(gen, output_tokens)}


def message_body(gen: Generation) -> dict[str, Any]:
    """The non-streamed ``message``."""
    choice = gen.choices[0]
    return _message(gen, [_content(choice)], _STOP_REASONS.get(choice.finish_reason, "end_turn"),
                    gen.usage["completion_tokens"])


def events(gen: Generation) -> Iterator[tuple[bytes, int]]:
    """Each event's payload (``type`` first, so the HTTP server names the event without parsing) with the tokens it
    carries, in Anthropic's order; usage arrives in two parts (``message_start``, then ``message_delta``)."""
    dumps = orjson.dumps
    choice = gen.choices[0]
    yield dumps({"type": "message_start", "message": _message(gen, [], None, 1)}), 0
    block = _content(choice)
    if block["type"] == "text":
        yield dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}), 0
        yield dumps({"type": "ping"}), 0
        for text, n in groups(choice.pieces):
            yield dumps({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": text}}), n
    else:
        yield dumps({"type": "content_block_start", "index": 0, "content_block": {**block, "input": {}}}), 0
        yield dumps({"type": "ping"}), 0
        for text, n in groups(choice.pieces):
            yield dumps({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": text}}), n
    yield dumps({"type": "content_block_stop", "index": 0}), 0
    yield dumps({"type": "message_delta",
                 "delta": {"stop_reason": _STOP_REASONS.get(choice.finish_reason, "end_turn"), "stop_sequence": None},
                 "usage": {"output_tokens": gen.usage["completion_tokens"]}}), 0
    yield dumps({"type": "message_stop"}), 0


def error_body(exc: SimulatedError) -> dict[str, Any]:
    """An error in Anthropic's shape, whatever raised it (validation or an injected failure)."""
    return {"type": "error", "error": {"type": anthropic_type(exc.status), "message": exc.message}}
