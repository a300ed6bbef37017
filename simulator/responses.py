"""OpenAI's Responses API (``POST /v1/responses``) in the simulator: the request as the chat engine's input, and the
engine's answer rendered as a ``response`` object or its semantic event stream (``response.created`` ...
``response.completed``), with usage as OpenAI reports it there (``input_tokens`` includes
``input_tokens_details.cached_tokens``; ``output_tokens_details.reasoning_tokens``).

The request is read with the gateway's own translation to chat (one mapping of the format, ``wire.responses``);
the answer is rendered here, as OpenAI renders it, so the gateway's native passthrough is tested against a far end
that speaks the format rather than against its own translator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from pipeline.errors import TiergateError
from simulator.engine import Choice, Engine, Generation
from simulator.errors import invalid
from simulator.text import groups
from wire.responses.request import chat_body, parse


def to_chat(body: Any) -> dict[str, Any]:
    """The chat engine's input for a Responses request, through the gateway's own translation
    (``wire.responses.request``); raises ``SimulatedError`` (400, OpenAI's shape) for what the API would refuse."""
    if not isinstance(body, dict):
        raise invalid("Invalid request body: expected a JSON object.", None, "invalid_type")
    try:
        parsed = parse(body)
    except TiergateError as exc:
        raise invalid(exc.message, exc.param, "invalid_value") from None
    limit = body.get("max_output_tokens")
    if limit is not None and limit < 16:  # OpenAI's own minimum, which the gateway's parser leaves to providers
        raise invalid(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got "
                      f"{limit} instead.", "max_output_tokens", "integer_below_min_value")
    return chat_body(parsed, parsed.input_items)


def generate(engine: Engine, body: dict[str, Any], chat: dict[str, Any]) -> Generation:
    """Answer a checked Responses request (``chat``: its ``to_chat``) with the chat engine; hosted tools are
    ignored."""
    gen = engine.chat(chat)
    gen.api = "responses"
    gen.native = body
    return gen


def _id(prefix: str, seed: str) -> str:
    return prefix + hashlib.blake2b(seed.encode(), digest_size=24).hexdigest()


def _usage(gen: Generation) -> dict[str, Any]:
    u = gen.usage
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
            "output_tokens": u["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": u["total_tokens"]}


def _items(gen: Generation, choice: Choice) -> list[dict[str, Any]]:
    """The output items, complete: a reasoning item when the model reasoned, then the message or function call."""
    items: list[dict[str, Any]] = []
    if gen.usage["completion_tokens_details"]["reasoning_tokens"]:
        items.append({"id": _id("rs_", gen.id), "type": "reasoning", "summary": []})
    if choice.tool_call is not None:
        call = choice.tool_call
        # the engine called the chat function standing for the tool: named back as the client named it
        namespace, name = parse(gen.native or {}).names.responses(call["function"]["name"])
        items.append({"id": _id("fc_", gen.id), "type": "function_call", "status": "completed",
                      "arguments": call["function"]["arguments"], "call_id": call["id"], "name": name,
                      **({"namespace": namespace} if namespace is not None else {})})
    else:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "".join(choice.pieces)}
        items.append({"id": _id("msg_", gen.id), "type": "message", "status": "completed", "role": "assistant",
                      "content": [part]})
    return items


def _response(gen: Generation, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
              ) -> dict[str, Any]:
    body = gen.native or {}
    incomplete = status == "incomplete"
    return {
        "id": _id("resp_", gen.id), "object": "response", "created_at": gen.created, "status": status,
        "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {}, "model": gen.model, "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None}, "service_tier": "default",
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage, "user": None,
    }


def _final_status(choice: Choice) -> str:
    return "incomplete" if choice.finish_reason == "length" else "completed"


def response_body(gen: Generation) -> dict[str, Any]:
    """The non-streamed ``response`` object."""
    choice = gen.choices[0]
    return _response(gen, _final_status(choice), _items(gen, choice), _usage(gen))


def events(gen: Generation) -> Iterator[tuple[bytes, int]]:
    """Each event's payload (``type`` first, so the HTTP server can name the event without parsing) with the tokens
    it carries, in the order OpenAI sends them."""
    dumps = orjson.dumps
    choice = gen.choices[0]
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        sequence += 1
        return dumps({"type": kind, "sequence_number": sequence - 1, **fields})

    head = _response(gen, "in_progress", [], None)
    yield event("response.created", response=head), 0
    yield event("response.in_progress", response=head), 0
    items = _items(gen, choice)
    for index, item in enumerate(items):
        if item["type"] == "reasoning":
            yield event("response.output_item.added", output_index=index, item=item), 0
            yield event("response.output_item.done", output_index=index, item=item), 0
        elif item["type"] == "function_call":
            yield event("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"}), 0
            for text, n in groups(choice.pieces):
                yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                            delta=text), n
            yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"]), 0
            yield event("response.output_item.done", output_index=index, item=item), 0
        else:
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []}), 0
            yield event("response.content_part.added", **where, part={**part, "text": ""}), 0
            for text, n in groups(choice.pieces):
                yield event("response.output_text.delta", **where, delta=text, logprobs=[]), n
            yield event("response.output_text.done", **where, text=part["text"], logprobs=[]), 0
            yield event("response.content_part.done", **where, part=part), 0
            yield event("response.output_item.done", output_index=index, item=item), 0
    status = _final_status(choice)
    final = _response(gen, status, items, _usage(gen))
    yield event("response.completed" if status == "completed" else "response.incomplete", response=final), 0
