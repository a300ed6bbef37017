"""OpenAI's wire shapes for a ``Generation``: the whole response, or the stream's chunk payloads.

Both transports use these, so the in-process provider and the HTTP server cannot drift apart. Chunks follow what
OpenAI sends byte for byte in structure: a role chunk, content deltas, a finish chunk with an empty delta, and with
``stream_options.include_usage`` a final ``"choices": []`` chunk carrying usage while every other chunk says
``"usage": null``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from simulator import messages, responses
from simulator.engine import Choice, Generation
from simulator.text import groups


def _message(choice: Choice) -> dict[str, Any]:
    if choice.tool_call is not None:
        return {"role": "assistant", "content": None, "tool_calls": [choice.tool_call], "refusal": None,
                "annotations": []}
    return {"role": "assistant", "content": "".join(choice.pieces), "refusal": None, "annotations": []}


def response_body(gen: Generation) -> dict[str, Any]:
    """The non-streamed response, in the format the request came in."""
    if gen.api == "responses":
        return responses.response_body(gen)
    if gen.api == "messages":
        return messages.message_body(gen)
    if gen.kind == "text":
        return {
            "id": gen.id, "object": "text_completion", "created": gen.created, "model": gen.model,
            "choices": [{"text": "".join(c.pieces), "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                        for i, c in enumerate(gen.choices)],
            "usage": gen.usage,
        }
    return {
        "id": gen.id, "object": "chat.completion", "created": gen.created, "model": gen.model,
        "choices": [{"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(gen.choices)],
        "usage": gen.usage, "service_tier": "default", "system_fingerprint": gen.fingerprint,
    }


def chunks(gen: Generation) -> Iterator[tuple[bytes, int]]:
    """Each SSE payload (no ``data: `` prefix, no ``[DONE]``) with how many tokens it carries, for pacing."""
    if gen.api == "responses":
        yield from responses.events(gen)
        return
    if gen.api == "messages":
        yield from messages.events(gen)
        return
    if gen.kind == "text":
        head: dict[str, Any] = {"id": gen.id, "object": "text_completion", "created": gen.created, "model": gen.model}
    else:
        head = {"id": gen.id, "object": "chat.completion.chunk", "created": gen.created, "model": gen.model,
                "service_tier": "default", "system_fingerprint": gen.fingerprint}
    tail = {"usage": None} if gen.include_usage else {}
    dumps = orjson.dumps

    def event(choice: dict[str, Any]) -> bytes:
        return dumps({**head, "choices": [choice], **tail})

    for i, c in enumerate(gen.choices):
        if gen.kind == "text":
            for text, n in groups(c.pieces):
                yield event({"text": text, "index": i, "logprobs": None, "finish_reason": None}), n
            yield event({"text": "", "index": i, "logprobs": None, "finish_reason": c.finish_reason}), 0
            continue
        if c.tool_call is None:
            yield event({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}), 0
            for text, n in groups(c.pieces):
                yield event({"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}), n
        else:
            call = c.tool_call
            opening = {"index": 0, "id": call["id"], "type": "function",
                       "function": {"name": call["function"]["name"], "arguments": ""}}
            yield event({"index": i, "delta": {"role": "assistant", "content": None, "tool_calls": [opening]},
                         "logprobs": None, "finish_reason": None}), 0
            for text, n in groups(c.pieces):
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
                yield event({"index": i, "delta": delta, "logprobs": None, "finish_reason": None}), n
        yield event({"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}), 0
    if gen.include_usage:
        yield dumps({**head, "choices": [], "usage": gen.usage}), 0
