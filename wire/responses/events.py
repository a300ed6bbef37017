"""A chat-completions chunk stream as Responses API server-sent events, in the order OpenAI sends them.

``response.created`` and ``response.in_progress`` first; for text, ``response.output_item.added`` (a message),
``response.content_part.added``, ``response.output_text.delta`` ..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; for each tool call, ``response.output_item.added``
(a function_call), ``response.function_call_arguments.delta`` ..., ``.done``, ``response.output_item.done`` (for a
custom tool, ``response.custom_tool_call_input.delta`` with the whole input once it is complete, and ``.done``); last
``response.completed`` (``response.incomplete`` when the output limit cut the answer) carrying usage, or ``error``
and ``response.failed`` when the upstream broke off. Every event has a ``sequence_number``; ``frame`` writes one as
``event: <type>\\ndata: <json>\\n\\n``.
"""

from __future__ import annotations

from typing import Any

import orjson

from wire.responses.response import (
    call_item,
    custom_input,
    envelope,
    item_id,
    message_item,
    output_text,
    usage_block,
)
from wire.responses.tool_names import NO_TOOLS, ToolNames

Event = dict[str, Any]


def frame(event: Event) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ChatToResponses:
    """One stream's translation. ``start()`` once, ``feed(chunk)`` per chat chunk, then ``finish()`` or
    ``fail(message)``; each returns the events to send, numbered in order."""

    def __init__(self, response_id: str, created_at: int, model: str, settings: dict[str, Any],
                 names: ToolNames = NO_TOOLS) -> None:
        self._id = response_id
        self._names = names  # chat function names -> the client's tools (custom, namespaced)
        self._created_at = created_at
        self.model = model
        self._settings = settings
        self._seq = 0
        self.output: list[dict[str, Any]] = []  # items, finished or open
        self._text: list[str] | None = None  # the open message item's text (or refusal)
        self._refusing = False  # the open message's part is a refusal, not output_text
        self._calls: dict[int, int] = {}  # chat tool_call index -> output index
        self._open_call: int | None = None  # output index of the function_call being streamed
        # A custom tool's call arrives as JSON arguments ({"input": "..."}); its input is sent whole once complete.
        self._custom_arguments: list[str] | None = None
        self._finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None  # the Responses usage block, once the usage chunk came

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def response(self, status: str, error: dict[str, Any] | None = None,
                 completed_at: int | None = None) -> dict[str, Any]:
        """The Response object as it stands."""
        return envelope(self._id, self._created_at, self.model, self._settings, status,
                        [_copy(item) for item in self.output], self.usage,
                        self._finish_reason if status == "completed" else None, error, completed_at)

    def start(self) -> list[Event]:
        return [self._event("response.created", response=self.response("in_progress")),
                self._event("response.in_progress", response=self.response("in_progress"))]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = usage_block(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Responses equivalent; the first choice is the answer
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                events += self._text_delta(text, refusal=False)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                events += self._text_delta(refusal, refusal=True)
            for call in delta.get("tool_calls") or ():
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, text: str, refusal: bool) -> list[Event]:
        """Text, or a refusal (chat's ``delta.refusal``: a message part of its own kind), into the open message."""
        events = self._close_call()
        if self._text is not None and self._refusing != refusal:
            events += self._close_text()  # the model switched between answering and refusing: a message each
        index = len(self.output)
        if self._text is None:
            self._text, self._refusing = [], refusal
            item = message_item(item_id("msg", self._id, index), "", "in_progress")
            item["content"] = []
            self.output.append(item)
            events.append(self._event("response.output_item.added", output_index=index, item=_copy(item)))
            item["content"].append(_part("", refusal))
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=_part("", refusal)))
        index = len(self.output) - 1
        self._text.append(text)
        if refusal:
            return [*events, self._event("response.refusal.delta", item_id=self.output[index]["id"],
                                         output_index=index, content_index=0, delta=text)]
        return [*events, self._event("response.output_text.delta", item_id=self.output[index]["id"],
                                     output_index=index, content_index=0, delta=text, logprobs=[])]

    def _close_text(self, status: str = "completed") -> list[Event]:
        if self._text is None:
            return []
        index = len(self.output) - 1
        text = "".join(self._text)
        self._text = None
        item = message_item(self.output[index]["id"], text, status)
        part = item["content"][0] = _part(text, self._refusing)
        self.output[index] = item
        done = (self._event("response.refusal.done", item_id=item["id"], output_index=index, content_index=0,
                            refusal=text) if self._refusing else
                self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=[]))
        return [done,
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _call_delta(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        key = call.get("index", 0)
        fn = call.get("function") or {}
        index = self._calls.get(key)
        if index is None:
            events += self._close_text()
            events += self._close_call()
            index = len(self.output)
            self._calls[key] = index
            self._open_call = index
            name = fn.get("name") or ""
            custom = self._names.is_custom(name)
            if custom:
                self._custom_arguments = []
            item = call_item(self._names, item_id("ctc" if custom else "fc", self._id, index), call.get("id") or "",
                             name, "", "in_progress")
            self.output.append(item)
            events.append(self._event("response.output_item.added", output_index=index, item=_copy(item)))
        item = self.output[index]
        if call.get("id") and not item["call_id"]:
            item["call_id"] = call["id"]
        if fn.get("name") and not item["name"]:  # a server that names the call after its first delta
            namespace, item["name"] = self._names.responses(fn["name"])
            if namespace is not None:
                item["namespace"] = namespace
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments and item["type"] == "custom_tool_call":
            if self._custom_arguments is not None:
                self._custom_arguments.append(arguments)
        elif isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=index, delta=arguments))
        return events

    def _close_call(self, status: str = "completed") -> list[Event]:
        if self._open_call is None:
            return []
        index, self._open_call = self._open_call, None
        item = self.output[index]
        item["status"] = status
        if item["type"] == "custom_tool_call":
            item["input"] = custom_input("".join(self._custom_arguments or ()))
            self._custom_arguments = None
            delta = [self._event("response.custom_tool_call_input.delta", item_id=item["id"], output_index=index,
                                 delta=item["input"])] if item["input"] else []
            return [*delta,
                    self._event("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                                input=item["input"]),
                    self._event("response.output_item.done", output_index=index, item=_copy(item))]
        return [self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            name=item["name"], arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=index, item=_copy(item))]

    def close_items(self) -> list[Event]:
        """Close whatever item is open; the answer is complete (or cut by the output limit)."""
        status = "incomplete" if self._finish_reason == "length" else "completed"
        return [*self._close_text(status), *self._close_call(status)]

    def finish(self, completed_at: int) -> list[Event]:
        """The terminal event, after ``close_items()``: ``response.completed``, or ``response.incomplete`` when the
        output limit cut the answer."""
        response = self.response("completed", completed_at=completed_at)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [self._event(kind, response=response)]

    def fail(self, message: str, code: str = "server_error") -> list[Event]:
        """The upstream broke off: open items end incomplete, then ``error`` (with the gateway's ``code``) and
        ``response.failed``, whose error code is ``server_error``: SDKs accept only OpenAI's codes there."""
        events = [*self._close_text("incomplete"), *self._close_call("incomplete")]
        error = {"code": "server_error", "message": message}
        return [*events, self._event("error", code=code, message=message, param=None),
                self._event("response.failed", response=self.response("failed", error=error))]


def _part(text: str, refusal: bool) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text} if refusal else output_text(text)


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it is at this event: later deltas must not change what an earlier event said."""
    return {**item, "content": [dict(p) for p in item["content"]]} if "content" in item else dict(item)
