"""HTTP endpoints of Anthropic's Messages API (``/v1/messages``, the anthropic SDK's and Claude Code's): the thin
layer over ``wire.messages``, and the error body in Anthropic's shape for every route under it.

A request is authenticated (``x-api-key`` or ``Authorization: Bearer``), checked and mapped to the canonical chat
body, and run through the one pipeline with ``api="messages"``; the client's own body rides along for
Anthropic-native deployments, with its ``anthropic-version`` / ``anthropic-beta`` headers. The answer's id
(``msg_...``) is minted here so the client and the ledger quote the same one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError
from pipeline.request import Request as PipelineRequest
from pipeline.result import Served
from proxy import (
    endpoints,  # a module, not its names: proxy.endpoints imports this module for error_response
)
from proxy.auth import authenticate
from proxy.body import check_chat, header_tags, parse_json
from proxy.errors import headers_of, wire
from proxy.render import json_response, respond_as
from wire.messages.errors import anthropic_type
from wire.messages.events import ChatToMessages, passed_through, translated
from wire.messages.request import native_body, stop_sequences, to_chat
from wire.messages.response import to_message
from wire.messages.tokens import count_tokens as count_prompt
from wire.messages.tokens import prompt_tokens

# Passed on unchanged to a deployment that answers the client's own body (Request.forward_headers).
_FORWARDED = ("anthropic-version", "anthropic-beta")


def error_response(error: TiergateError) -> Response:
    """``error`` as Anthropic's SDKs expect it: ``{"type": "error", "error": {"type", "message"}}``, same status and
    headers as on OpenAI's wire."""
    status = wire(error).status
    body = orjson.dumps({"type": "error", "error": {"type": anthropic_type(status), "message": error.message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers_of(error))


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def forwarded(headers: Mapping[str, str]) -> dict[str, str] | None:
    found = {name: headers[name] for name in _FORWARDED if name in headers}
    return found or None


async def create(request: Request) -> Response:
    """``POST /v1/messages``: a Message, or its stream of events."""
    rt = endpoints.runtime(request)
    policy = rt.store.policy  # one policy object for the whole request, even across a reload
    principal = authenticate(policy, request.headers)
    tags = header_tags(request.headers.items())
    body = parse_json(await endpoints.read_body(request, policy.config.server.max_body_bytes))
    chat = to_chat(body)
    check_chat(chat)  # the pipeline's invariants hold for every canonical body, whoever built it
    response_id = new_message_id()
    result = await rt.pipeline.run(PipelineRequest(
        kind="chat/completions", body=chat, principal=principal, policy=policy,
        request_id=request.scope["state"]["request_id"], tags=tags, tier_header=request.headers.get("x-tiergate-tier"),
        client_gone=lambda: endpoints.hung_up(request.receive), api="messages", native=native_body(body),
        session=endpoints.session_of(request.headers, policy, principal), forward_headers=forwarded(request.headers),
        response_id=response_id))
    stops = stop_sequences(body)
    model = result.notes.model or chat["model"]
    if isinstance(result, Served):
        if result.api == "messages":  # a native deployment answered in the client's format
            return respond_as(result, {**result.body, "id": response_id}, None)
        return respond_as(result, to_message(result.body, response_id, stops, lambda: prompt_tokens(chat), model),
                          None)
    if result.api == "messages":
        return respond_as(result, None, passed_through(result, response_id))
    translator = ChatToMessages(response_id, model, prompt_tokens(chat), stops)
    return respond_as(result, None, translated(result, translator))


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": n}``, tiktoken's count (``wire.messages.tokens``)."""
    policy = endpoints.runtime(request).store.policy
    authenticate(policy, request.headers)
    body = parse_json(await endpoints.read_body(request, policy.config.server.max_body_bytes))
    return json_response({"input_tokens": count_prompt(body)})
