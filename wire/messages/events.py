"""A chat completions stream rendered as Anthropic's Messages events, framed the way Anthropic's SDKs parse them:
``event: <type>\\ndata: <json>\\n\\n`` (their decoder dispatches on the ``event:`` line, so it is never left out).

Order: ``message_start``, ``ping``, then per content block ``content_block_start`` / ``content_block_delta``
(``text_delta``, ``input_json_delta``, ``thinking_delta``) / ``content_block_stop``, then ``message_delta``
(stop_reason, usage) and ``message_stop``. The upstream's usage arrives last (the canonical body asks for it), after
``message_start`` has gone out: ``message_start`` carries the prompt's tiktoken estimate as ``input_tokens``, and
``message_delta`` the exact counts, every field of them (SDKs overwrite message_start's usage with each field
message_delta carries), plus the cost in an ``x_tiergate`` object (``event.model_extra`` in the SDK), as a chat
stream's usage chunk carries it. A stream the upstream cut ends with an ``error``
event (``api_error``) instead of message_delta, as Anthropic's own API does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from metering.money import format_usd
from pipeline.result import Streaming
from wire.messages.response import anthropic_usage, reasoning_of, stop_reason, usage_of


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(message: str, kind: str = "api_error") -> bytes:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


class ChatToMessages:
    """One stream's translation: ``start()``, ``feed()`` each chunk, then ``finish()``."""

    def __init__(self, response_id: str, model: str, prompt_tokens: int, stop_sequences: tuple[str, ...]) -> None:
        self._id = response_id
        self._model = model
        self._prompt_tokens = prompt_tokens  # the estimate message_start shows, and the fallback's prompt count
        self._stop_sequences = stop_sequences
        self._index = -1  # the open content block, -1 before the first
        self._open: str | None = None  # its type ("text", "thinking", "tool_use"); None when closed
        self._calls: dict[int, int] = {}  # the chunk's tool call index -> its content block index
        self._finish: Any = None
        self._matched: Any = None
        self._usage: dict[str, Any] | None = None
        self._text: list[str] = []  # what the pipeline counts for its estimate when no usage comes
        self._x_tiergate: dict[str, Any] | None = None  # the relay's cost note on the usage chunk

    def start(self) -> list[bytes]:
        usage = {"input_tokens": self._prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": 0}
        message = {"id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": usage}
        return [event("message_start", {"type": "message_start", "message": message}),
                event("ping", {"type": "ping"})]

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
            self._open = None

    def _begin(self, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self._index += 1
        self._open = block["type"]
        out.append(event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                 "content_block": block}))

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(event("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}))

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
            if isinstance(chunk.get("x_tiergate"), dict):
                self._x_tiergate = chunk["x_tiergate"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:  # a Messages answer has one choice
                continue
            delta = choice.get("delta") or {}
            thinking = reasoning_of(delta)
            if thinking is not None:
                if self._open != "thinking":
                    self._begin({"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta({"type": "thinking_delta", "thinking": thinking}, out)
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text.append(text)
                if self._open != "text":
                    self._begin({"type": "text", "text": ""}, out)
                self._delta({"type": "text_delta", "text": text}, out)
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, out)
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
        return out

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self._calls:
            name = function.get("name") or ""
            self._text.append(name)
            self._begin({"type": "tool_use", "id": call.get("id") or "", "name": name, "input": {}}, out)
            self._calls[position] = self._index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._text.append(arguments)
            if self._calls[position] == self._index:  # chat servers stream one call after another
                self._delta({"type": "input_json_delta", "partial_json": arguments}, out)

    def finish(self, cost_nanos: int | None, tier: str | None) -> list[bytes]:
        """The closing events once the upstream completed; ``cost_nanos`` is what the ledger billed."""
        out: list[bytes] = []
        self._close(out)
        reason, sequence = stop_reason(self._finish, self._matched, self._stop_sequences)
        usage = anthropic_usage(usage_of(self._usage, lambda: self._prompt_tokens, "".join(self._text), self._model))
        data: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                "usage": usage}
        if self._x_tiergate is not None:  # the relay's (cost, tier, score, model), as a chat stream carries it
            data["x_tiergate"] = self._x_tiergate
        elif cost_nanos is not None:
            data["x_tiergate"] = {"cost_usd": format_usd(cost_nanos), "tier": tier}
        out.append(event("message_delta", data))
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


async def translated(streaming: Streaming, translator: ChatToMessages) -> AsyncIterator[bytes]:
    """The relay's chat chunks as Anthropic events."""
    for frame in translator.start():
        yield frame
    relay = streaming.relay
    async for payload in relay.payloads():
        for frame in translator.feed(orjson.loads(payload)):
            yield frame
    if relay.error is not None:
        yield error_event(relay.error)
        return
    for frame in translator.finish(relay.cost_nanos, streaming.notes.tier):
        yield frame


async def passed_through(streaming: Streaming, response_id: str) -> AsyncIterator[bytes]:
    """A native deployment's Messages events, framed, with the message id the client was promised."""
    relay = streaming.relay
    async for payload in relay.payloads():
        data = orjson.loads(payload)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "message_start" and isinstance(data.get("message"), dict):
            data["message"]["id"] = response_id
            payload = orjson.dumps(data)
        yield b"event: " + str(kind or "message").encode() + b"\ndata: " + payload + b"\n\n"
    if relay.error is not None:
        yield error_event(relay.error)
