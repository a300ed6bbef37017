"""``POST /v1/responses``: the Responses API's ingress. Parse and check (``wire.responses.request``), expand a
``previous_response_id`` from the conversation store, mint the response id, run the one pipeline, render the
answer back (translated from chat, or a native deployment's own passed through with our id), and store it.

The answer is stored before the client is told it is complete (before the response body, or before the stream's
``response.completed``), so a next turn sent the moment the client has it finds it. A store that fails after the
answer was paid for does not take the answer away: the client gets it with ``store: false`` (the truth), and the
log says why.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from kvcache.responses import (
    HistoryTooLarge,
    ResponseStoreUnavailable,
    StoredResponse,
    check_history,
)
from metering.money import format_usd
from pipeline.errors import TiergateError
from pipeline.request import Request as PipelineRequest
from pipeline.result import Notes, Served, Streaming
from proxy.auth import authenticate
from proxy.body import check_chat, header_tags, parse_json
from proxy.endpoints import hung_up, read_body, runtime, session_of
from proxy.errors import ERRORS
from proxy.render import respond_as
from proxy.runtime import Runtime
from wire.responses import request as wire_request
from wire.responses.events import ChatToResponses, frame
from wire.responses.response import echo, from_chat

log = logging.getLogger("tiergate.responses")

_CUT = ERRORS["upstream_failed.stream_cut"]
# The hosted tools' types a team's ``responses.hosted_tools: drop`` left out of the request (comma-separated).
DROPPED_TOOLS_HEADER = "x-tiergate-dropped-tools"


def mint_response_id() -> str:
    """``resp_`` and 48 hex digits, as OpenAI's: the id the client and the ledger see, whoever answered."""
    return "resp_" + secrets.token_hex(24)


class _Turn:
    """One request's conversation bookkeeping: what it continues, what it sends, and how to store its answer."""

    def __init__(self, rt: Runtime, team: str, ttl_s: float, parsed: wire_request.ResponsesRequest,
                 history: list[dict[str, Any]], response_id: str, created_at: int) -> None:
        self.rt = rt
        self.team = team
        self.ttl_s = ttl_s  # the team's, from the policy the request was admitted under
        self.parsed = parsed
        self.items = wire_request.conversation(history, parsed)
        self.response_id = response_id
        self.created_at = created_at

    async def store(self, response: dict[str, Any], notes: Notes) -> dict[str, Any]:
        """Keep ``response`` (and the conversation up to it) when the client asked; returns it as the client gets
        it (``store: false`` if it could not be kept)."""
        if not self.parsed.store or response.get("status") not in ("completed", "incomplete"):
            return response
        output = response.get("output") or []
        stored = StoredResponse(id=self.response_id, team=self.team, created_at=self.created_at,
                                items=[*self.items, *output], response=response, tier=notes.tier,
                                deployment=notes.deployment)
        try:
            await self.rt.responses.put(stored, self.ttl_s)
        except (ResponseStoreUnavailable, HistoryTooLarge) as exc:
            log.warning("response %s not stored: %s", self.response_id, type(exc).__name__)
            return {**response, "store": False}
        return response


async def _history(rt: Runtime, parsed: wire_request.ResponsesRequest, team: str) -> list[dict[str, Any]]:
    """The stored conversation ``previous_response_id`` continues (another team's id is as unknown as none)."""
    previous = parsed.previous_response_id
    if previous is None:
        return []
    try:
        stored = await rt.responses.get(previous, team)
    except ResponseStoreUnavailable as exc:
        raise TiergateError("response_store_unavailable",
                            f"the response store did not answer ({exc}); retry later") from None
    if stored is None:
        raise TiergateError("previous_response_not_found", f"Previous response with id {previous[:100]!r} not "
                            "found (unknown, expired, deleted, or stored with store=false).",
                            param="previous_response_id")
    return stored.items


async def create(request: Request) -> Response:
    rt = runtime(request)
    policy = rt.store.policy  # one policy object for the whole request, even across a reload
    principal = authenticate(policy, request.headers)
    tags = header_tags(request.headers.items())
    parsed = wire_request.parse(parse_json(await read_body(request, policy.config.server.max_body_bytes)))
    team = principal.team
    if team is None:
        raise TiergateError("team_key_required", "admin keys cannot make model calls; use a team key")
    responses_policy = policy.teams[team].settings.responses
    dropped: tuple[str, ...] = ()
    if parsed.native_only and not wire_request.serves_natively(policy, team, "responses"):
        if responses_policy.hosted_tools == "drop":
            parsed, dropped = wire_request.without_hosted_tools(parsed)
        wire_request.require_translatable(parsed, team)
    turn = _Turn(rt, team, responses_policy.store_ttl_s, parsed,
                 await _history(rt, parsed, team), mint_response_id(), int(time.time()))
    try:
        check_history(turn.items)  # before any upstream call: a conversation the store could not keep costs nothing
    except HistoryTooLarge as exc:
        param = "previous_response_id" if parsed.previous_response_id else "input"
        raise TiergateError("invalid_request.invalid_value", str(exc), param=param) from None
    chat = wire_request.chat_body(parsed, turn.items)
    check_chat(chat)  # the pipeline's invariants, as for a chat client
    metadata = chat.get("metadata")
    if metadata:
        tags = {**metadata, **tags}
    result = await rt.pipeline.run(PipelineRequest(
        kind="chat/completions", body=chat, principal=principal, policy=policy,
        request_id=request.scope["state"]["request_id"], tags=tags,
        tier_header=request.headers.get("x-tiergate-tier"), client_gone=lambda: hung_up(request.receive),
        api="responses", native=wire_request.native_body(parsed, turn.items), response_id=turn.response_id,
        session=session_of(request.headers, policy, principal)))
    notes = result.notes
    settings = echo(parsed.body, notes.max_tokens if notes.max_tokens_note is not None else None)
    if isinstance(result, Served):
        if result.api == "responses":
            answer = _native_answer(result.body, turn)
        else:
            answer = from_chat(result.body, turn.response_id, turn.created_at, settings, int(time.time()),
                               parsed.names)
        response = respond_as(result, await turn.store(answer, notes), None)
    else:
        events = (_native_events(result, turn) if result.api == "responses"
                  else _translated_events(result, turn, settings))
        response = respond_as(result, None, events)
    if dropped:
        response.headers[DROPPED_TOOLS_HEADER] = ", ".join(dropped)
    return response


def _native_answer(body: dict[str, Any], turn: _Turn) -> dict[str, Any]:
    """A native deployment's Response object as ours: our id, and the conversation it continues."""
    return {**body, "id": turn.response_id, "previous_response_id": turn.parsed.previous_response_id,
            "store": turn.parsed.store}


def _extra(streaming: Streaming) -> dict[str, Any]:
    """What the ``x-tiergate-*`` headers say, for a stream whose cost is known only at its end (SDKs expose it
    as ``response.model_extra["x_tiergate"]``)."""
    notes, cost = streaming.notes, streaming.relay.cost_nanos
    # the keys of a chat stream's x_tiergate (pipeline.pipeline.x_tiergate_of), so one reader serves both
    return {"tier": notes.tier, "score": notes.score, "model": notes.model,
            "cost_usd": format_usd(cost) if cost is not None else None}


async def _translated_events(streaming: Streaming, turn: _Turn, settings: dict[str, Any]) -> AsyncIterator[bytes]:
    relay = streaming.relay
    stream = ChatToResponses(turn.response_id, turn.created_at, streaming.notes.model or "", settings,
                             turn.parsed.names)
    for event in stream.start():
        yield frame(event)
    async for payload in relay.payloads():
        for event in stream.feed(orjson.loads(payload)):
            yield frame(event)
    if relay.error is not None:
        for event in stream.fail(relay.error, _CUT.code or "server_error"):
            yield frame(event)
        return
    for event in stream.close_items():
        yield frame(event)
    (done,) = stream.finish(int(time.time()))
    done["response"] = await turn.store(done["response"], streaming.notes)
    yield frame({**done, "response": {**done["response"], "x_tiergate": _extra(streaming)}})


async def _native_events(streaming: Streaming, turn: _Turn) -> AsyncIterator[bytes]:
    """A native deployment's Responses events, passed through with our id in every Response object they carry."""
    relay = streaming.relay
    sequence = 0
    terminal: dict[str, Any] | None = None
    async for payload in relay.payloads():
        event = orjson.loads(payload)
        sequence = int(event.get("sequence_number") or sequence) + 1
        response = event.get("response")
        if isinstance(response, dict):
            event["response"] = _native_answer(response, turn)
            if event.get("type") in ("response.completed", "response.incomplete"):
                terminal = event  # sent once the relay has settled, with what it cost
                continue
        yield frame(event) if "type" in event else b"data: " + orjson.dumps(event) + b"\n\n"
    if relay.error is not None:
        yield frame({"type": "error", "sequence_number": sequence, "code": _CUT.code or "server_error",
                     "message": relay.error, "param": None})
        return
    if terminal is not None:
        terminal["response"] = await turn.store(terminal["response"], streaming.notes)
        yield frame({**terminal, "response": {**terminal["response"], "x_tiergate": _extra(streaming)}})
